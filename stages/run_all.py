"""`pipeline run all`: prepare a dataset, train every registered model family on a small
budget, benchmark them on the same clips and write the report: the README's main command.

    pipeline run all --dataset sample --out runs/sample [--budget small|tiny] [--models a,b]

The families are fomm/families.py's (`--models` picks some); each trains with its tiny config,
`configs/<family>-tiny.yaml` (FOMM's is `tiny.yaml`; fomm.registry.family_config). Stages
run one after another in this process, each through its own stage module (the same code
`pipeline run <stage>` runs), and write under `--out`:

    data/                     pipeline run prepare (Ray)
    train/<family>/           pipeline run train (config.yaml, metrics.jsonl, checkpoints/)
    benchmark/                pipeline run benchmark (per-clip results, parquet, tables, samples)
    report.html, report.md    pipeline run report
    timings.json              seconds and settings of every stage

A stage is done when timings.json records it done with the same settings and its output
is on disk; a rerun skips done stages up to the first one that is not, and runs that one
and every later one (their inputs may have changed), so a killed run resumes where it
stopped (a training stage from its latest checkpoint, the benchmark from its finished
clips) and a finished run rerun does nothing but the report. A model that fails to train
is recorded as failed with its error and left out of the benchmark; the others go on (exit
code 1). Budgets: `small` (the default) is the README's run, sized to finish in under 10
minutes on 2 CPU cores; `tiny` is the reduced version the tests run.
"""
from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from core.errors import UserError

log = logging.getLogger(__name__)

def families() -> list[str]:
    """Every registered model family, in the registry's order (fomm/families.py)."""
    from fomm.families import NAMES
    return list(NAMES)


def train_config(family: str) -> str:
    """The tiny config a family trains with here: configs/<family>-tiny.yaml where it has one."""
    from fomm.registry import family_config
    return family_config("tiny", family)


@dataclass(frozen=True)
class Budget:
    """How much work each stage does."""
    steps: dict[str, int]          # training steps per family
    default_steps: int             # for a family `steps` does not name
    batch_size: int
    max_clips: int | None          # benchmark: first N test clips (None: all)
    max_frames: int | None         # benchmark: first N frames of each clip
    bootstrap: int                 # bootstrap resamples of the confidence intervals


    def steps_for(self, family: str) -> int:
        return self.steps.get(family, self.default_steps)


BUDGETS = {
    # CPU seconds per training step at batch 8 of each tiny config (2 threads), measured side
    # by side on the shared 2-core machine under load (about twice an idle machine's): FOMM 6.2,
    # Monkey-Net 3.0, X2Face 5.2, MRAA 7.4, TPSMM 19.1. These steps give each family a similar
    # share of the README's run, which must stay under 10 minutes on 2 cores.
    "small": Budget(steps={"fomm": 40, "monkey-net": 60, "x2face": 40, "mraa": 40, "tpsmm": 20},
                    default_steps=40, batch_size=8, max_clips=None, max_frames=None, bootstrap=1000),
    "tiny": Budget(steps={}, default_steps=4, batch_size=2, max_clips=2, max_frames=6, bootstrap=100),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default="sample", help="dataset to prepare (default: sample)")
    parser.add_argument("--out", required=True, type=Path, help="run folder")
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="small",
                        help="small: the README's run (<15 min on 2 cores); tiny: the tests' run")
    parser.add_argument("--models", default=None,
                        help="families to train and compare (default: every one of fomm/families.py)")
    parser.add_argument("--prepare-arg", action="append", default=[],
                        help="extra argument for prepare, e.g. --prepare-arg=--manifest=FILE (repeatable)")
    parser.add_argument("--force", action="store_true", help="rerun every stage")


# --------------------------------------------------------------------------- stage bookkeeping
class Timings:
    """timings.json: per stage its status, seconds and the argument list it ran with."""

    def __init__(self, path: Path):
        self.path = path
        self.data = json.loads(path.read_text()) if path.is_file() else {}
        self.data.setdefault("stages", {})

    def is_done(self, stage: str, argv: list[str]) -> bool:
        entry = self.data["stages"].get(stage, {})
        return entry.get("status") == "done" and entry.get("argv") == argv

    def record(self, stage: str, argv: list[str], seconds: float, status: str,
               cpu_seconds: float = 0.0, error: str = "") -> None:
        """`seconds`: wall time; `cpu_seconds`: this process's CPU time (all its threads; Ray
        workers not included), which a machine shared with other jobs inflates less."""
        self.data["stages"][stage] = {"status": status, "seconds": round(seconds, 2),
                                      "cpu_seconds": round(cpu_seconds, 2), "argv": argv,
                                      # other jobs on the machine inflate wall times: say how busy it was
                                      "load_average_1min": round(os.getloadavg()[0], 2),
                                      "error": error,
                                      "finished": datetime.datetime.now(datetime.timezone.utc).isoformat()}
        self.data["total_seconds"] = round(sum(e["seconds"] for e in self.data["stages"].values()), 2)
        self.save()

    def save(self) -> None:
        from core.media import atomic_path
        with atomic_path(self.path) as tmp:
            tmp.write_text(json.dumps(self.data, indent=2) + "\n")


def run_stage(stage: str, argv: list[str]) -> None:
    """`pipeline run <stage> <argv>` in this process, through the stage's own parser and
    `main` (its typed `options(args)` and `run`, as the command line); UserError if it does
    not return 0."""
    import importlib
    from stages.cli import STAGES, build_parser
    args = build_parser(stage).parse_args(["run", stage, *argv])
    code = int(importlib.import_module(STAGES[stage][0]).main(args) or 0)
    if code != 0:
        raise UserError(f"stage {stage!r} ended with exit code {code} (arguments {argv})")


# --------------------------------------------------------------------------- the plan
def plan(args: "RunAllOptions") -> list[tuple[str, str, list[str], Path]]:
    """(name, stage, argv, output that must exist) for every stage, in order."""
    budget = BUDGETS[args.budget]
    out = Path(args.out)
    models = args.models
    data = out / "data"
    steps = [("prepare", "prepare", ["--dataset", args.dataset, "--out", str(data), "--no-progress",
                                     *args.prepare_arg], data / "clips.parquet")]
    for model in models:
        train_dir = out / "train" / model
        # num_epochs = steps: an epoch has at least one step, so max_steps is what stops it
        count = budget.steps_for(model)
        overrides = [f"train_params.max_steps={count}",
                     f"train_params.num_epochs={count}",
                     f"train_params.batch_size={budget.batch_size}",
                     f"train_params.checkpoint_every={count}",
                     f"train_params.checkpoint_freq={count}",  # epochs: none before the end
                     f"train_params.image_every={count}",
                     f"train_params.log_every={max(1, count // 10)}"]
        steps.append((f"train-{model}", "train",
                      ["--config", train_config(model), "--model", model, "--data", str(data),
                       "--out", str(train_dir), *overrides],
                      train_dir / "checkpoints" / f"step-{count:07d}.pt"))
    return steps


def benchmark_stage(args: "RunAllOptions", models: list[str]) -> tuple[str, str, list[str], Path]:
    """The benchmark of the models that trained."""
    budget, out = BUDGETS[args.budget], Path(args.out)
    spec = ",".join(f"{m}={out / 'train' / m / 'checkpoints' / f'step-{budget.steps_for(m):07d}.pt'}"
                    for m in models)
    bench = ["--dataset", args.dataset, "--data", str(out / "data"), "--models", spec,
             "--out", str(out / "benchmark"), "--bootstrap", str(budget.bootstrap)]
    bench += ["--max-clips", str(budget.max_clips)] if budget.max_clips else []
    bench += ["--max-frames", str(budget.max_frames)] if budget.max_frames else []
    return "benchmark", "benchmark", bench, out / "benchmark" / "benchmark.json"


@dataclass(frozen=True)
class RunAllOptions:
    """`run all`'s options, resolved: the families checked against the registry."""
    dataset: str
    out: Path
    budget: str
    models: tuple[str, ...]
    prepare_arg: tuple[str, ...] = ()
    force: bool = False


def options(args: argparse.Namespace) -> RunAllOptions:
    """The typed options of `run all` (UserError on an unknown family, before any work)."""
    known = families()
    models = [m for m in args.models.split(",") if m] if args.models is not None else known
    unknown = [m for m in models if m not in known]
    if unknown or not models:
        raise UserError(f"--models {args.models!r}: expected names from {known}")
    return RunAllOptions(args.dataset, Path(args.out), args.budget, tuple(models), tuple(args.prepare_arg),
                         bool(args.force))


def run(options: RunAllOptions) -> dict:
    """Every stage not yet done, with `--out` claimed; returns timings.json's content."""
    from core import outputs
    with outputs.claim(options.out, "all", {}, earlier=("timings.json",)):
        return run_stages(options)


def run_stages(args: RunAllOptions) -> dict:
    """Run every stage not yet done; returns timings.json's content."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    timings = Timings(out / "timings.json")
    timings.data["budget"] = args.budget
    stages = plan(args)
    models = [name.split("-", 1)[1] for name, stage, *_ in stages if stage == "train"]
    planned = {name for name, *_ in stages} | {"benchmark", "report"}
    timings.data["stages"] = {k: v for k, v in timings.data["stages"].items() if k in planned}
    ran = False  # once a stage runs, every later one runs too: its inputs changed
    for index in range(len(stages) + 1):
        if index == len(stages):  # the benchmark takes the models that trained
            trained = [m for m in models if timings.data["stages"][f"train-{m}"]["status"] == "done"]
            if not trained:
                raise UserError("no model trained; see the errors in timings.json and above")
            name, stage, argv, output = benchmark_stage(args, trained)
        else:
            name, stage, argv, output = stages[index]
        if not (args.force or ran) and timings.is_done(name, argv) and output.exists():
            log.info("%s: done in an earlier run, skipped", name)
            continue
        ran = True
        if stage == "train":  # continue from the latest checkpoint (if any); --force starts afresh
            argv_run = [*argv, "--overwrite" if args.force else "--resume"]
        else:
            argv_run = argv
        log.info("%s: pipeline run %s %s", name, stage, " ".join(argv_run))
        started, cpu = time.perf_counter(), time.process_time()
        try:
            run_stage(stage, argv_run)
        except Exception as error:
            timings.record(name, argv, time.perf_counter() - started, "failed", time.process_time() - cpu,
                           error=f"{type(error).__name__}: {error}")
            if stage != "train":
                raise
            # one model that fails to train must not cost the others their benchmark; a bad
            # input is one line, anything else is a bug whose traceback the user needs
            log.error("%s failed (%s: %s); the run goes on without it", name, type(error).__name__,
                      error, exc_info=not isinstance(error, UserError))
            continue
        timings.record(name, argv, time.perf_counter() - started, "done", time.process_time() - cpu)
    # The report is always rewritten: it shows the timings of every stage, its own included.
    started, cpu = time.perf_counter(), time.process_time()
    timings.record("report", [], 0.0, "running")
    run_stage("report", ["--run", str(out)])
    timings.record("report", [], time.perf_counter() - started, "done", time.process_time() - cpu)
    run_stage("report", ["--run", str(out)])  # again, cheap: now with the report's own time
    return timings.data


def main(args: argparse.Namespace) -> int:
    """0 when every stage is done; 1 when a model failed to train (the rest still ran)."""
    data = run(options(args))
    print(f"done in {data['total_seconds']:.0f} s; report: {Path(args.out) / 'report.html'}")
    for stage, entry in data["stages"].items():
        print(f"  {stage:<18} {entry['seconds']:8.1f} s wall {entry.get('cpu_seconds', 0):8.1f} s CPU  "
              f"{entry['status']} {entry.get('error', '')}")
    return 0 if all(e["status"] == "done" for e in data["stages"].values()) else 1
