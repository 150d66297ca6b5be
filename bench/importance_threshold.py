"""How many trials importances need: the synthetic check behind balm_tune.importance.MIN_TRIALS and RELIABLE_TRIALS.

    python bench/importance_threshold.py                    # about 2 minutes on 2 CPU cores

The default space's four keys with their own ranges and types; a synthetic objective where the
learning rate dominates (a log-quadratic valley), the scaling factor matters a little and prompt_len
and contrastive_weight not at all, plus noise. For each number of trials n and each seed, a seeded
TPE study (as the search's sampler) runs n trials and both evaluators rank the keys. It prints, per n,
how often learning_rate comes first and the mean importance given to the two irrelevant keys.
"""

from __future__ import annotations

import argparse
import math
import random

import optuna

from balm_tune.importance import param_importances


def objective(trial: optuna.Trial, noise: random.Random) -> float:
    lr = trial.suggest_float("learning_rate", 3e-4, 1e-2, log=True)
    scale = trial.suggest_float("scale_factor", 0.25, 4.0, log=True)
    trial.suggest_int("prompt_len", 2, 12)
    trial.suggest_float("contrastive_weight", 0.0, 2.0)
    return math.log(lr / 2e-3) ** 2 + 0.1 * math.log(scale) ** 2 + noise.gauss(0, 0.05)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--trials", type=int, nargs="+", default=[6, 8, 10, 12, 16])
    p.add_argument("--seeds", type=int, default=20)
    args = p.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    print("n trials | evaluator | learning_rate ranked first | mean importance of the 2 irrelevant keys")
    for n in args.trials:
        for evaluator in ("fANOVA", "PED-ANOVA"):
            first, irrelevant = 0, 0.0
            for seed in range(args.seeds):
                noise = random.Random(seed)
                study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=seed))
                study.optimize(lambda t, noise=noise: objective(t, noise), n_trials=n)
                values = param_importances(study, evaluator=evaluator, min_complete=1).values
                first += next(iter(values)) == "learning_rate"
                irrelevant += values["prompt_len"] + values["contrastive_weight"]
            print(f"{n:8d} | {evaluator:9s} | {first:2d}/{args.seeds} | {irrelevant / args.seeds:.2f}")


if __name__ == "__main__":
    main()
