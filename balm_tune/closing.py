"""The lines a search ends with (`SearchResult.text`): what `python -m balm_tune.search` and `run_search`
print last, built from the summary, so the CLI and the Python API say the same."""

from __future__ import annotations

from typing import TYPE_CHECKING

from balm_tune.outcome import Outcome
from core.baselines import comparison

if TYPE_CHECKING:
    from balm_tune.api import SearchResult


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
    tests = summary.significance()
    for name, baseline in summary.baseline_scores().items():
        lines.append(comparison(name, scores, baseline, who="the winner", tests=tests.get(name)))
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
