"""The lines a search ends with (`SearchResult.text`): what `python -m balm_tune.search` and `run_search`
print last, built from the summary, so the CLI and the Python API say the same."""

from __future__ import annotations

from typing import TYPE_CHECKING

from balm_tune.outcome import Outcome
from core.baselines import comparison

if TYPE_CHECKING:
    from balm_tune.api import SearchResult
    from core.significance import SeedSpread


def closing_text(result: SearchResult) -> str:
    """The closing lines of a finished, interrupted or winnerless search."""
    if result.interrupted:
        return _interrupted(result)
    if not result.summary.has_winner:
        return f"no trial finished successfully; see {result.paths['leaderboard']}"
    lines = _summary(result)
    if result.summary.stalled:
        lines.append(f"error: {result.summary.stalled} (the finished trials are exported above)")
    return "\n".join(lines)


def _interrupted(result: SearchResult) -> str:
    table = result.leaderboard
    stopped = table[table["outcome"] == Outcome.INTERRUPTED]
    lines = [f"[trial {row.trial_id}] interrupted ({row.reason})" for row in stopped.itertuples()]
    lines.append(
        f"interrupted: {len(table)} trials, {len(stopped)} stopped by Ctrl-C; nothing "
        f"exported. Continue with the same --storage and: --name {result.experiment.name} --resume"
    )
    return "\n".join(lines)


def _summary(result: SearchResult) -> list[str]:
    summary, paths = result.summary, result.paths
    outcomes = ", ".join(f"{n} {s}" for s, n in summary.outcomes.items())
    winner, windows, scores = summary.winner, summary.windows, summary.scores()
    params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in summary.params.items())
    lines = [
        f"\n{summary.trials} trials ({outcomes}) in {summary.wall_seconds:.0f}s",
        f"best trial {winner.trial_id}: val {scores['val'].describe(windows.val_total)} "
        f"after {winner.epochs_run} epochs; {params}",
        f"winner's test {scores['test'].describe(windows.test)} (test data used for the winner only)",
    ]
    base = summary.base
    if base and base["trial_id"] != winner.trial_id:
        lines.append(
            f"the search gained: val mse {base['best_val_mse']:.4f} of the base config (trial {base['trial_id']}, "
            f"evaluated first, {base['status']}) -> {winner.best_val_mse:.4f} of the winner, on the same "
            f"{windows.val:,} windows ({1 - winner.best_val_mse / base['best_val_mse']:.0%} lower)"
        )
    elif base:
        lines.append("the search gained nothing on validation: the base config (evaluated first) is the winner")
    if summary.final_seeds:
        f = summary.final_seeds
        lines.append(
            f"winner on {len(f['runs'])} further seeds: test mse {f['test_mse_mean']:.6f} +- {f['test_mse_std']:.6f}, "
            f"mae {f['test_mae_mean']:.6f} +- {f['test_mae_std']:.6f} (each over {windows.test:,} windows)"
        )
    lines.append(summary.importances.line())
    spread = summary.seed_spread()
    if summary.official:
        lines.append(retrained_line(OFFICIAL_LINE, summary.official, scores["test"].mse, spread))
    for arm, figures in (summary.ablations or {}).items():
        lines.append(ablation_line(arm, figures, scores["test"].mse, spread))
    tests = summary.significance()
    for name, baseline in summary.baseline_scores().items():
        lines.append(comparison(name, scores, baseline, who="the winner", tests=tests.get(name), spread=spread))
    lines += [
        f"leaderboard:   {paths['leaderboard']}  (baselines: {paths['baselines']})",
        f"best config:   {paths['config']}",
        f"checkpoint:    {paths['checkpoint']}",
        f"summary:       {paths['summary']}",
        f"report:        {paths['report']}",
        f"tensorboard:   tensorboard --logdir {result.experiment}",
        f"optuna study:  optuna-dashboard {paths['study']}  (study name {result.experiment.name})",
        f"retrain:       python -m balm_tune.train --config {paths['config']}",
    ]
    return lines


OFFICIAL_LINE = "official config (the space's first enqueued one, retrained)"
ARMS = {  # what each ablation arm is, in the words of a line (core/model.py; Tan et al. 2024)
    "no_llm": "no LLM: the head reads the patches",
    "llm2attn": "the LLM replaced by one trainable attention layer",
    "random_llm": "the LLM's architecture with random frozen weights",
}


def ablation_line(arm: str, result: dict, winner_test_mse: float, winner_spread: SeedSpread | None = None) -> str:
    """One line per ablation arm (retrained_line)."""
    return retrained_line(f"ablation {arm} ({ARMS[arm]})", result, winner_test_mse, winner_spread)


def retrained_line(what: str, result: dict, winner_test_mse: float, winner_spread: SeedSpread | None = None) -> str:
    """One line per retrained config (an ablation arm, the official config): its figures over seeds, the
    winner's verdict against it on test (the paired test) and, with several seeds, whether its mean +- std
    excludes the winner's figure (the winner's seeds' mean when it has `winner_spread`, else its test MSE)."""
    from core.baselines import verdict
    from core.significance import DieboldMariano, SeedSpread

    runs, tested = result["runs"], DieboldMariano(**result["significance_on_test"])
    spread = f" +- {result['test_mse_std']:.4f}" if len(runs) > 1 else ""
    run = result["tested_run"]  # the arm's run on the winner's own seed: the one the test pairs with the winner
    line = (
        f"{what}: val mse {result['best_val_mse_mean']:.4f}, test mse "
        f"{result['test_mse_mean']:.4f}{spread} mae {result['test_mae_mean']:.4f} over {result['test_windows']:,} "
        f"windows, {len(runs)} seed(s); {result['parameters']:,} trainable parameters, "
        f"{result['step_seconds_mean']:.3f}s per step; the winner {verdict(winner_test_mse, run['test_mse'], tested)} "
        f"its seed-{run['seed']} run on test ({winner_test_mse:.4f} vs {run['test_mse']:.4f}, {tested.p_text()})"
    )
    if len(runs) < 2:
        return line
    other = winner_spread.mean if winner_spread else winner_test_mse
    whose = f"the winner's {winner_spread.seeds}-seed mean" if winner_spread else "the winner's"
    arm_spread = SeedSpread(result["test_mse_mean"], result["test_mse_std"], len(runs))
    return f"{line}; its {arm_spread.text(other)} ({whose})"
