"""Winners that hold: the top configurations of a search, trained again on fresh seeds.

Every search trial trains from the study's seed (the same weights and batches; with
``train.seed_per_trial`` each on its own, never a fresh seed below), so the best single-seed value
is the best *draw*, and part of its lead is luck (the winner's curse: on a digits MLP, winners lost
8-30% on fresh seeds). After the search, the best configurations are trained on ``seeds`` fresh
seeds each (by default a race within a quarter of the study's trials: :func:`_race`; with ``top``
given, exactly those: :func:`_fixed`); then the winner's *step back*, at ``step_back`` (0.7) times
its rate on the same seeds, again (0.49x, 0.343x) while each step is clearly better
(:func:`_step_back`). The export names the best mean, or its last step back within
:data:`STEP_BACK_TOLERANCE` and one standard error of the rate above it, with the spread.

Why the step back: loss rises gently below the best rate and steeply above it, where the spread
between seeds grows too, and a search's winners crowd against that edge (``bench/efficiency.py``,
digits deep, seed 8: adam 0.0102 cosine confirmed at 1.05x the grid's pick, 1.30x on other fresh
seeds; its step back 0.94x and 1.03x). At most 3% of the confirmed mean is given up for it.

- The runs live in a sibling study ``<name>.confirm`` (the search trial's configuration fixed, with
  the trial it re-trains and its seed): an interrupted confirmation resumes, the search's sampler
  never sees them, and invocations on one machine share them (:func:`_next_run`).
- MLflow runs under the parent run, tagged ``autolr.role = confirm``, ``autolr.confirm_of``,
  ``autolr.seed`` (and a step back's ``autolr.lr_scale``).
- A configuration that diverges (or fails) on a fresh seed is dropped: a winner that does not hold.
  Candidates that differ only in a rate within :data:`NEAR_DECADES` of a better one's are one.
- With ``--jobs`` they run in the main process, after the workers; with every sampler and ``lr: auto``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import statistics
import time
from collections.abc import Callable, Container, Sequence
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from autolr import keys, owner, store
from autolr.claim import ClaimLock, start_owned
from autolr.config import PruningConfig, StudyConfig
from autolr.driver import INTERRUPTED, fail_interrupted, run_one
from autolr.errors import LoopContractError
from autolr.seeds import SEED_STRIDE, fresh_seed

if TYPE_CHECKING:
    from autolr.space import LrBounds

__all__ = ["SEED_STRIDE", "Confirmation", "confirmation", "confirmation_pending", "run_confirmation"]

logger = logging.getLogger(__name__)

DROP_SLACK = 0.3  # a race candidate's remaining seeds may do this much better than its search value before it is dropped
NEAR_DECADES = 0.1  # two rates closer than this (a factor 1.26), all else equal, are one candidate
STEP_BACK_STEPS = 3  # at most this many step backs (0.7x, 0.49x, 0.343x the winner's rate), each only after a clear gain
WAIT_S = 0.5  # how often a confirmation waiting on another process's runs looks again
STEP_BACK_TOLERANCE = 0.03  # the step back is exported unless its mean is worse than the winner's by more than this share (or its standard error)


@dataclasses.dataclass(frozen=True)
class Confirmation:
    """One configuration's confirmed values (fresh seeds, in order); ``complete``: every seed ran."""

    trial: int
    single_seed_value: float
    seeds: tuple[int, ...]
    values: tuple[float, ...]
    complete: bool
    dropped: str = ""  # why it is out of the race (diverged or failed on a fresh seed; cannot beat the best mean)
    lr_scale: float = 1.0  # 1: the search trial's configuration; below 1: the winner's step back, at this factor of its rate
    params: dict[str, Any] | None = None  # the step back's flat configuration, as its runs trained it

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        """The spread over the fresh seeds; None with fewer than two (one seed has no spread)."""
        return statistics.stdev(self.values) if len(self.values) > 1 else None

    @property
    def standard_error(self) -> float:
        """Of the mean: 0 with one seed (nothing to tell it from), as with seeds that agree."""
        return statistics.stdev(self.values) / math.sqrt(len(self.values)) if len(self.values) > 1 else 0.0

    def to_dict(self) -> dict[str, Any]:
        out = {"trial": self.trial, "seeds": list(self.seeds), "values": list(self.values), "mean": self.mean, "std": self.std}
        return out if self.lr_scale == 1.0 else {**out, "lr_scale": float(f"{self.lr_scale:.6g}")}  # 0.49 for 0.7**2


def confirm_name(config: StudyConfig) -> str:
    return f"{config.name}.confirm"


def fresh_seeds(config: StudyConfig, n: int) -> list[int]:
    return [fresh_seed(config.seed, k) for k in range(1, n + 1)]  # no search trial's seed, per trial or not


def status(confirmations: Sequence[Confirmation], enabled: bool) -> str:
    """``off``, ``pending`` (not run, or under way), ``complete`` or ``all dropped``, for exports."""
    if not enabled:
        return "off"
    if not confirmations or any(not c.complete and not c.dropped for c in confirmations):
        return "pending"
    return "complete" if any(c.complete and not c.dropped for c in confirmations) else "all dropped"


def _plan(config: StudyConfig) -> dict[str, Any]:
    """``top`` candidates, fresh ``seeds``, ``budget``, ``step_back`` and its ``steps``: with ``top`` left to autolr,
    a race of up to ``budget`` runs over as many candidates; with ``top`` given, exactly those
    configurations (budget None). Stored with the confirmation with the rules it races by (``near``,
    ``slack``), so that reading it later walks the plan it ran under: a confirmation that is over
    stays as it ended, whatever the study file or autolr says now."""
    top, n_seeds = config.confirm.plan(config.trials)
    budget = config.confirm.budget(config.trials)
    return {"top": budget if budget is not None else top, "seeds": fresh_seeds(config, n_seeds), "budget": budget,
            "step_back": config.confirm.step_back, "steps": STEP_BACK_STEPS, "near": NEAR_DECADES, "slack": DROP_SLACK}  # fmt: skip


_FIRST_RULES = {"budget": None, "step_back": None, "steps": 1, "near": 0.0, "slack": 0.0}  # a plan stored before 2026-12-07: no budget
# (top given), no step back, exact duplicates, no slack; one step back at most before the chain of step backs (plan key "steps")


def candidates(study: optuna.Study, top: int, *, near: float = NEAR_DECADES) -> list[FrozenTrial]:
    """The ``top`` best COMPLETE search trials with distinct configurations, best first. A trial
    whose configuration is a better one's but for a rate within ``near`` decades of it is passed
    over: a search that closes in on a rate leaves several such trials at the top (digits, study seed
    6: sgd 0.0386, 0.0394, 0.0419 constant), and racing each would spend the budget on one configuration."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    reverse = study.direction == optuna.study.StudyDirection.MAXIMIZE
    picked: list[FrozenTrial] = []
    for t in sorted(complete, key=lambda t: t.value, reverse=reverse):
        if not any(_near(t.params, p.params, near) for p in picked):
            picked.append(t)
        if len(picked) == top:
            break
    return picked


def _near(a: dict[str, Any], b: dict[str, Any], decades: float) -> bool:
    """The same configuration, or the same but for rates within ``decades``."""
    if a.keys() != b.keys() or any(a[k] != b[k] for k in a if k != "lr"):
        return False
    if "lr" not in a or a["lr"] == b["lr"]:
        return True
    return a["lr"] > 0 and b["lr"] > 0 and abs(math.log10(a["lr"] / b["lr"])) < decades


def confirmation(config: StudyConfig, study: optuna.Study, url: str) -> list[Confirmation]:
    """What the storage holds of the study's confirmation, per candidate, best candidate first."""
    if not config.confirm.enabled:
        return []
    confirm_study = _load(config, url)
    runs = confirm_study.get_trials(deepcopy=False) if confirm_study else []
    # the plan of the invocation that confirmed (its --trials and --seed may differ from the study file's)
    plan = confirm_study.user_attrs.get(keys.CONFIRM_PLAN) if confirm_study else None
    plan = {**_FIRST_RULES, **plan} if isinstance(plan, dict) else _plan(config)
    picked = candidates(study, plan["top"], near=plan["near"])
    return _walk(picked, runs, plan["seeds"], plan["budget"], config.direction, step_back=plan["step_back"], steps=plan["steps"], slack=plan["slack"])[0]


_Runs = dict[tuple[int, float], dict[int, FrozenTrial]]  # (search trial number, lr scale) -> fresh seed -> its latest run
_Next = tuple[FrozenTrial, int, float] | None  # the (candidate, seed, lr scale) to train next; None: nothing is left


def _walk(
    picked: Sequence[FrozenTrial],
    runs: Sequence[FrozenTrial],
    seeds: Sequence[int],
    budget: int | None,
    direction: str,
    *,
    step_back: float | None = None,
    steps: int = STEP_BACK_STEPS,
    slack: float = DROP_SLACK,
    skip: Container[tuple[int, int, float]] = (),
) -> tuple[list[Confirmation], _Next]:
    """Where the confirmation stands, from its stored runs: each candidate's confirmation (and the
    winner's step back), and the next (candidate, seed, lr scale) to train (None: it is over, or
    what is left waits for a triple in ``skip``). A pure function of the runs, so an interrupted
    confirmation, or another invocation's, resumes exactly where it stood."""
    by_candidate: _Runs = {}
    for t in sorted(runs, key=lambda t: t.number):  # a seed trained again after an interruption: the later run
        of, seed = t.user_attrs.get(keys.CONFIRM_OF), t.user_attrs.get(keys.SEED)
        if of is not None and seed is not None:
            by_candidate.setdefault((of, float(t.user_attrs.get(keys.LR_SCALE, 1.0))), {})[seed] = t
    if budget is None:
        done, following = _fixed(picked, by_candidate, seeds, skip)
    else:
        done, following = _race(picked, by_candidate, seeds, budget, direction, slack)
    if following is None and step_back is not None and all(c.complete or c.dropped for c in done):
        backs, following = _step_back(picked, done, by_candidate, seeds, step_back, steps, direction)
        done += backs
    return done, (None if following is not None and (following[0].number, *following[1:]) in skip else following)


def _fixed(
    picked: Sequence[FrozenTrial], by_candidate: _Runs, seeds: Sequence[int], skip: Container[tuple[int, int, float]]
) -> tuple[list[Confirmation], _Next]:
    """``top`` given: every candidate on every seed, seed by seed (every candidate's first fresh seed
    before anyone's second); a candidate that diverges or fails is dropped."""
    out, todo = [], []
    for trial in picked:
        mine, values, done, dropped = by_candidate.get((trial.number, 1.0), {}), [], [], ""
        for k, seed in enumerate(seeds):
            t = mine.get(seed)
            if t is not None and _dropped(t):
                dropped = _why(t)
            elif t is not None and t.state == TrialState.COMPLETE:
                values.append(float(t.value))
                done.append(seed)
            else:
                todo.append((k, trial, seed))
        out.append(Confirmation(trial.number, float(trial.value), tuple(done), tuple(values), len(values) == len(seeds), dropped))
    out_of_race = {c.trial for c in out if c.dropped}
    todo = [(k, trial, seed) for k, trial, seed in todo if trial.number not in out_of_race and (trial.number, seed, 1.0) not in skip]
    return out, ((*min(todo, key=lambda x: x[0])[1:], 1.0) if todo else None)


def _race(
    picked: Sequence[FrozenTrial], by_candidate: _Runs, seeds: Sequence[int], budget: int, direction: str, slack: float
) -> tuple[list[Confirmation], _Next]:
    """``top`` left to autolr: candidates in the order of their search values, each on every fresh
    seed, while the runs fit in ``budget``. A search value is the best draw of its configuration, so
    it is an optimistic estimate of what the configuration does on a fresh seed: a candidate whose
    search value does not beat the best confirmed mean so far is not tried (nor is anyone after it).
    One that diverges or fails on a fresh seed is dropped, as always.

    A candidate is dropped after a seed once its mean could not beat the best confirmed mean even if
    its remaining seeds did ``slack`` (:data:`DROP_SLACK`) better than its search value: a fresh seed can
    beat a best draw (digits, study seed 6: adam 0.0063 step, search value 0.0855, read 0.107, 0.109,
    then 0.061, and won; without the slack it was dropped after its second). One far off (0.78 against
    0.137) is dropped at once. So a winner whose search value was luck makes the race go on to the
    next candidates, and a winner that held ends it after its own seeds."""
    better = _better(direction)
    out: list[Confirmation] = []
    used, best = 0, None
    for trial in picked:
        mine = by_candidate.get((trial.number, 1.0), {})
        if not any(seed in mine for seed in seeds):  # not started: is it worth starting, and does it fit?
            if best is not None and not better(trial.value, best.mean):
                break
            if used + len(seeds) > budget:
                break
        hopeful = trial.value - slack * abs(trial.value) if direction == "minimize" else trial.value + slack * abs(trial.value)

        def hopeless(values: list[float], best=best, hopeful=hopeful) -> str:
            at_best = (sum(values) + (len(seeds) - len(values)) * hopeful) / len(seeds)
            if best is None or len(values) == len(seeds) or better(at_best, best.mean):
                return ""
            return f"cannot beat #{best.trial}'s confirmed mean {best.mean:.4g} ({at_best:.4g} at best)"

        c, pending, runs = _on_seeds(trial, mine, seeds, hopeless=hopeless)
        used += runs
        out.append(c)
        if pending is not None:
            return out, (trial, pending, 1.0)
        if c.complete and (best is None or better(c.mean, best.mean)):
            best = c
    return out, None


def _step_back(
    picked: Sequence[FrozenTrial], done: Sequence[Confirmation], by_candidate: _Runs, seeds: Sequence[int], factor: float, steps: int, direction: str
) -> tuple[list[Confirmation], _Next]:
    """The winner of the candidates at ``factor``, ``factor**2``... times its rate, on the same seeds:
    a step is taken after the one before only if that one was clearly better than the rate above it
    (:func:`_clearly_better`), at most ``steps`` steps and never below the rate's search range. The
    step backs' confirmations so far, and the next (candidate, seed, scale) to train.

    Why more than one step: one step back from a winner far over the edge may still be over it (digits
    wide, study seed 2: Adam cosine 0.0158 confirmed at 0.163, search value 0.104; 0.7x at 0.126; the
    grid's best Adam rates are near 0.003). A winner that holds its ground costs one step."""
    winner = _best([c for c in done if c.complete and not c.dropped], direction)
    trial = next((t for t in picked if winner is not None and t.number == winner.trial), None)
    lr, dist = (trial.params.get("lr"), trial.distributions.get("lr")) if trial is not None else (None, None)
    out: list[Confirmation] = []
    if lr is None:
        return out, None
    above = winner
    for k in range(1, steps + 1):
        scale = factor**k
        if dist is not None and lr * scale < dist.low:
            break
        c, pending, _ = _on_seeds(trial, by_candidate.get((trial.number, scale), {}), seeds, lr_scale=scale)
        out.append(c)
        if pending is not None:
            return out, (trial, pending, scale)
        if not c.complete or not _clearly_better(c, above, direction):
            break
        above = c
    return out, None


def _clearly_better(c: Confirmation, than: Confirmation, direction: str) -> bool:
    """``c``'s mean beats ``than``'s by more than the standard error of ``than``'s mean; never on one
    seed, which has no standard error to beat (any gain would do, noise included)."""
    if len(than.values) < 2:
        return False
    margin = than.standard_error
    return c.mean < than.mean - margin if direction == "minimize" else c.mean > than.mean + margin


def _on_seeds(
    trial: FrozenTrial, mine: dict[int, FrozenTrial], seeds: Sequence[int], *, lr_scale: float = 1.0, hopeless: Callable[[list[float]], str] | None = None
) -> tuple[Confirmation, int | None, int]:
    """One configuration's runs, seed by seed in order, up to the first one missing: its
    confirmation, that seed (None when every seed ran or the configuration was dropped: it diverged
    or failed, or ``hopeless`` gave a reason after a seed) and the runs it spent."""
    values, done, dropped, pending, params = [], [], "", None, None
    for seed in seeds:
        t = mine.get(seed)
        if t is not None and _dropped(t):
            dropped = _why(t)
            return _confirmation(trial, done, values, seeds, dropped, lr_scale, params), None, len(values) + 1
        if t is None or t.state != TrialState.COMPLETE:
            pending = seed
            break
        values.append(float(t.value))
        done.append(seed)
        params = params or t.user_attrs.get(keys.PARAMS)
        dropped = hopeless(values) if hopeless is not None else ""
        if dropped:
            break
    return _confirmation(trial, done, values, seeds, dropped, lr_scale, params), pending, len(values)


def _confirmation(trial: FrozenTrial, done: list[int], values: list[float], seeds: Sequence[int], dropped: str, lr_scale: float, params) -> Confirmation:
    complete = len(values) == len(seeds) and not dropped
    return Confirmation(trial.number, float(trial.value), tuple(done), tuple(values), complete, dropped, lr_scale, params if lr_scale != 1.0 else None)


def _better(direction: str) -> Callable[[float, float], bool]:
    return (lambda a, b: a < b) if direction == "minimize" else (lambda a, b: a > b)


def _best(confirmations: Sequence[Confirmation], direction: str) -> Confirmation | None:
    pick = min if direction == "minimize" else max
    return pick(confirmations, key=lambda c: c.mean) if confirmations else None


def _why(t: FrozenTrial) -> str:
    return t.user_attrs.get(keys.PRUNE_REASON) or t.user_attrs.get(keys.ERROR) or t.state.name


def confirmation_pending(config: StudyConfig, study: optuna.Study, url: str) -> bool:
    """Whether a confirmation run is still to be trained (the search being at its target)."""
    return any(not c.complete and not c.dropped for c in confirmation(config, study, url))


def confirmed_winner(confirmations: Sequence[Confirmation], direction: str) -> Confirmation | None:
    """The configuration with the best mean over every fresh seed, or its step back when that is
    within :data:`STEP_BACK_TOLERANCE` of it and within the standard error of its mean (what its
    seeds cannot tell apart: where seeds agree, as on a full-batch least-squares problem, a slower
    rate that is 2% worse is 2% lost), once the confirmation is over (nothing still to train); None
    while it is under way, or when every candidate was dropped."""
    if any(not c.complete and not c.dropped for c in confirmations):
        return None
    held = [c for c in confirmations if c.complete and not c.dropped]
    winner = _best([c for c in held if c.lr_scale == 1.0], direction)
    backs = sorted((c for c in held if winner is not None and c.trial == winner.trial and c.lr_scale != 1.0), key=lambda c: -c.lr_scale)
    for back in backs:  # each step back taken after a clear gain; the last one exported if it held up
        if not _held_up(back, winner, direction):
            break
        winner = back
    return winner


def exported_trial(study: optuna.Study, confirmations: Sequence[Confirmation], direction: str) -> tuple[FrozenTrial | None, Confirmation | None]:
    """The search trial the export names and its confirmation: the confirmed winner's (a step back's
    configuration is that trial's at a factor of its rate: :func:`exported_params`), else the best
    single-seed trial with None (confirmation off, under way, or all dropped); (None, None) without a
    COMPLETE trial. What ``autolr export`` writes and ``autolr compare`` lists."""
    winner = confirmed_winner(confirmations, direction)
    if winner is not None:
        return study.get_trials(deepcopy=False)[winner.trial], winner  # a study's trials in the order of their numbers
    return store.best_trial(study), None


def exported_params(winner: Confirmation | None, trial: FrozenTrial) -> dict[str, Any]:
    """The flat configuration the export names for ``trial``, the confirmed ``winner``'s search
    trial: a step back's, at its rate, else the trial's own."""
    return dict(winner.params if winner is not None and winner.params else trial.user_attrs[keys.PARAMS])


def _held_up(back: Confirmation, winner: Confirmation, direction: str) -> bool:
    """``back``'s mean is no worse than ``winner``'s by more than the tolerance or its standard error."""
    slack = min(STEP_BACK_TOLERANCE * abs(winner.mean), winner.standard_error)
    return back.mean <= winner.mean + slack if direction == "minimize" else back.mean >= winner.mean - slack


def run_confirmation(
    config: StudyConfig,
    study: optuna.Study,
    url: str,
    *,
    make_objective: Callable[[StudyConfig], Callable[[optuna.Trial], float]],
    lr_bounds: LrBounds,
    on_trial: Callable[[FrozenTrial], None] | None = None,
) -> None:
    """Train what is still missing of the confirmation (:func:`_fixed` with ``top`` given, else
    :func:`_race`; then :func:`_step_back`), one run at a time."""
    if not config.confirm.enabled:
        return
    plan = _plan(config)
    confirm_study = _open(config, url)
    confirm_study.set_user_attr(keys.CONFIRM_PLAN, plan)
    picked, tried = candidates(study, plan["top"], near=plan["near"]), set()
    lock, waiting = ClaimLock(url, confirm_study.study_name), None
    try:
        while True:
            following, started = _next_run(config, confirm_study, picked, plan, tried, lock)
            if following is None:
                return
            trial, seed, scale = following
            if not isinstance(started, optuna.Trial):  # the next run is another live process's on this machine: wait for it
                if waiting != following:
                    logger.warning("confirmation: waiting for trial %d's run on seed %d, which process %s trains", trial.number, seed, started)
                waiting = following
                time.sleep(WAIT_S)
                continue
            seeded = dataclasses.replace(config, seed=seed, pruning=dataclasses.replace(config.pruning, curve="none"))
            try:
                last = run_one(confirm_study, started, make_objective(seeded))
            except LoopContractError as exc:  # FAIL with its error: the candidate is dropped, as for any error
                logger.warning("confirmation of trial %d on seed %d failed: %s", trial.number, seed, exc)
                continue
            except KeyboardInterrupt:  # before run_one's own guard (the objective's build): not left RUNNING for others to wait on
                fail_interrupted(confirm_study, started)
                raise
            if on_trial is not None:
                on_trial(last)
            what = f"trial {trial.number}" + (f" at {scale:g}x its lr" if scale != 1.0 else "")
            logger.info("confirmation of %s on seed %d: %s %s", what, seed, last.state.name, last.value)
            if last.state == TrialState.FAIL and not _dropped(last):
                logger.warning("confirmation of %s on seed %d ended without a result; the next invocation trains it again", what, seed)
    finally:
        lock.close()


def _next_run(config: StudyConfig, confirm_study: optuna.Study, picked, plan, tried: set, lock: ClaimLock):
    """``(next (candidate, seed, scale), its run started here)``; ``(that, the pid of another live process here that trains it)``;
    ``(None, None)``: over. Under the claim lock: two invocations on one machine never train one run (another machine's: as before)."""
    with lock.held():
        # read before every run, not once: another invocation on the study may have trained (or dropped) a pair since;
        # a pair tried here that ended without a result or an error is left to the next invocation
        runs = confirm_study.get_trials(deepcopy=False)
        running = [t for t in runs if t.state == TrialState.RUNNING]
        if running and store.fail_stale_trials(confirm_study, retry=False, running=running):
            runs = confirm_study.get_trials(deepcopy=False)
        done, following = _walk(picked, runs, plan["seeds"], plan["budget"], config.direction, step_back=plan["step_back"],
                                steps=plan["steps"], slack=plan["slack"], skip=tried)  # fmt: skip
        if following is None:
            _warn_if_seeds_change_nothing(config, done)
            return None, None
        trial, seed, scale = following
        for u in (t.user_attrs for t in runs if t.state == TrialState.RUNNING):
            who = u.get(keys.OWNER) if (u.get(keys.CONFIRM_OF), u.get(keys.SEED), float(u.get(keys.LR_SCALE, 1.0))) == (trial.number, seed, scale) else None
            if owner.on_this_machine(who) and who["pid"] != os.getpid() and not owner.is_dead(who):
                return following, who["pid"]
        tried.add((trial.number, seed, scale))
        attrs = {keys.CONFIRM_OF: trial.number, keys.SEED: seed, keys.SOURCE: "confirm"}
        params = dict(trial.params)
        if scale != 1.0:
            params["lr"], attrs[keys.LR_SCALE] = trial.params["lr"] * scale, scale
        return following, start_owned(confirm_study, params, attrs)


def _warn_if_seeds_change_nothing(config: StudyConfig, done: Sequence[Confirmation]) -> None:
    """Fresh seeds that all gave the same value trained the same run (``torch.manual_seed(0)`` in a loop): a spread of 0 says nothing."""
    same = next((c for c in done if len(c.values) > 1 and len(set(c.values)) == 1), None)
    if same is not None:
        logger.warning(
            "%s: confirmation: trial %d gave %.6g on each of its %d fresh seeds, so they say nothing of how it holds: its training "
            "does not depend on the seed (the %s seeds itself, or nothing in it is random); autolr seeds torch, random and NumPy "
            "before each run (a loop gets the seed as trial.seed)",
            config.path, same.trial, same.values[0], len(same.values), config.code_key,
        )  # fmt: skip


def _dropped(t: FrozenTrial) -> bool:
    """Diverged on a fresh seed, or raised: out of the race. (An interrupted run, FAIL without an
    error or with :data:`~autolr.driver.INTERRUPTED` as its error, is not: it is trained again when
    the confirmation resumes.)"""
    return t.state == TrialState.PRUNED or (t.state == TrialState.FAIL and t.user_attrs.get(keys.ERROR, INTERRUPTED) != INTERRUPTED)


def _open(config: StudyConfig, url: str) -> optuna.Study:
    confirm_config = dataclasses.replace(config, name=confirm_name(config), pruning=PruningConfig(curve="none"))
    sampler = optuna.samplers.RandomSampler(seed=config.seed)
    return store.create_or_load(confirm_config, url, sampler=sampler, pruner=optuna.pruners.NopPruner(), identity=False)  # the search study holds it


def _load(config: StudyConfig, url: str) -> optuna.Study | None:
    named = dataclasses.replace(config, name=confirm_name(config))
    return store.load(named, url, identity=False) if store.exists(named.name, url) else None
