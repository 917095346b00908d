"""`mmgen bench`: the smoke benchmark end to end, resuming, failures, launchers (the bench file's checks:
test_bench_spec.py; the report's arithmetic and formats: test_bench_report.py)."""

from __future__ import annotations

import copy
import json
import math
import re
import shutil
from pathlib import Path

import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from mmgen.bench import PARENT_ENV, LocalLauncher, Task, config_hash, identity, load_spec, make_plan
from mmgen.cli.main import create_app
from mmgen.errors import MMGenError
from tests.conftest import REPO
from tests.test_bench_spec import TINY_BENCH, write

SMOKE = REPO / "configs" / "bench" / "smoke.yaml"
RUNS = ["mmvae-s0", "mmvae-s1", "ebm-mmvae-s0", "ebm-mmvae-s1"]


def invoke(*args):
    return CliRunner().invoke(create_app(with_plugin_commands=False), [str(a) for a in args])


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """configs/bench/smoke.yaml run once, two runs at a time."""
    out = tmp_path_factory.mktemp("bench") / "smoke"
    result = invoke("bench", SMOKE, "--out", out, "--jobs", "2")
    assert result.exit_code == 0, result.output
    return out, result.output


def final_mtimes(out: Path) -> dict[str, int]:
    return {r: (out / "runs" / r / "checkpoints" / "final.pt").stat().st_mtime_ns for r in RUNS}


def test_smoke_benchmark_writes_every_output(smoke):
    out, output = smoke
    for name in ("results.md", "results.tex", "results.csv", "results-seeds.csv", "results.json"):
        assert (out / name).is_file(), name
    plots = {"curves-loss.png", "bar-cross_coherence_mean_1to1.png", "bar-joint_coherence_coherence.png",
             "cross-generation.png"}
    assert {p.name for p in (out / "plots").iterdir()} == plots
    for name in plots:
        with Image.open(out / "plots" / name) as img:
            assert img.format == "PNG" and img.width >= 300 and img.height >= 150

    report = json.loads((out / "results.json").read_text())
    assert [e["run"] for e in report["summary"]] == ["mmvae", "ebm-mmvae"]
    assert report["provenance"]["command"] == f"mmgen bench {SMOKE} --jobs 2 --out {out}"
    assert all(e["finished"] == 2 and e["failed"] == 0 for e in report["summary"])
    fingerprints = set()
    for run in RUNS:
        run_dir = out / "runs" / run
        state = json.loads((run_dir / "bench.json").read_text())
        assert state["status"] == "finished"
        assert (run_dir / "checkpoints" / "final.pt").is_file() and (run_dir / "bench-cross.png").is_file()
        # A normal run directory whose stored config is the one the plan hashed.
        stored = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert config_hash(stored) == state["config_hash"]
        evaluation = json.loads((run_dir / "eval.json").read_text())
        assert evaluation["step"] == 8  # the shared budget
        fingerprints.add(evaluation["dataset"]["fingerprint"])
    assert len(fingerprints) == 1  # the same data for every run

    # The table's numbers are the mean and sample std of the runs' eval.json values.
    for entry in report["summary"]:
        values = [json.loads((out / "runs" / f"{entry['run']}-s{s}" / "eval.json").read_text())
                  ["metrics"]["cross_coherence"]["mean_1to1"] for s in (0, 1)]
        cell = entry["columns"]["cross_coherence/mean_1to1"]
        mean = sum(values) / 2
        assert cell["n"] == 2 and math.isclose(cell["mean"], mean)
        assert math.isclose(cell["std"], math.sqrt(sum((v - mean) ** 2 for v in values)), abs_tol=1e-12)
    assert "cross coherence 1→1" in (out / "results.md").read_text()
    assert "mmgen bench smoke" in output and "finished ebm-mmvae-s1" in output
    # Each ended run says how far the benchmark is: runs ended of those to run.
    assert sorted(re.findall(r"\[(\d)/4 in \d+ min\]", output)) == ["1", "2", "3", "4"], output


def test_rerun_skips_finished_runs_and_redoes_only_what_changed(smoke, tmp_path):
    src, _ = smoke
    out = tmp_path / "smoke"
    shutil.copytree(src, out)
    before = final_mtimes(out)

    assert {p.id: p.action for p in make_plan(load_spec(SMOKE), out).runs} == dict.fromkeys(RUNS, "skip")
    result = invoke("bench", SMOKE, "--out", out)
    assert result.exit_code == 0, result.output
    assert final_mtimes(out) == before
    assert "started " not in result.output and "mmgen bench smoke: mean ± std" in result.output

    # Change one run's config (and keep one of its seeds) and put a run that fails first: the
    # failure is reported, the changed run is trained again, the unchanged run is not touched.
    spec = yaml.safe_load(SMOKE.read_text())
    spec["runs"][0].update(overrides=["model.latent_dim=3"], seeds=[0])
    spec["runs"].insert(0, {"name": "broken", "recipe": "mmvae", "seeds": [0],
                            "overrides": ["train.batch_size=1000"]})  # larger than the 64 training tuples
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(spec))
    plan = make_plan(load_spec(changed), out)
    assert {p.id: (p.action, p.reason.split(" (")[0]) for p in plan.runs} == {
        "broken-s0": ("train", "new"), "mmvae-s0": ("train", "config changed"),
        "ebm-mmvae-s0": ("skip", "finished"), "ebm-mmvae-s1": ("skip", "finished")}

    result = invoke("bench", changed, "--out", out)
    assert result.exit_code == 1, result.output
    after = final_mtimes(out)
    assert after["ebm-mmvae-s0"] == before["ebm-mmvae-s0"] and after["ebm-mmvae-s1"] == before["ebm-mmvae-s1"]
    assert after["mmvae-s0"] != before["mmvae-s0"] and after["mmvae-s1"] == before["mmvae-s1"]  # not planned now
    cfg = yaml.safe_load((out / "runs" / "mmvae-s0" / "config.yaml").read_text())
    assert cfg["model"]["latent_dim"] == 3

    broken = json.loads((out / "runs" / "broken-s0" / "bench.json").read_text())
    assert broken["status"] == "failed" and "batch_size" in broken["error"]
    report = json.loads((out / "results.json").read_text())
    counts = {e["run"]: (e["finished"], e["failed"]) for e in report["summary"]}
    assert counts == {"broken": (0, 1), "mmvae": (1, 0), "ebm-mmvae": (2, 0)}
    assert "broken` seed 0 — failed" in (out / "results.md").read_text()


def test_a_run_made_before_mmgen_gained_an_option_keeps_its_identity(tmp_path, plugins):
    p = make_plan(load_spec(SMOKE), tmp_path).runs[0]
    p.run_dir.mkdir(parents=True)

    def store(cfg):
        (p.run_dir / "config.yaml").write_text(yaml.safe_dump(cfg))
        (p.run_dir / "bench.json").write_text(json.dumps({"config_hash": config_hash(cfg)}))
        return identity(p.run_dir, p.config, plugins.registry)

    old = copy.deepcopy(p.config)
    del old["train"]["weight_decay"]  # as if the option did not exist when the run was made
    assert store(old) == config_hash(old) != config_hash(p.config)  # at its default: the same run
    changed = copy.deepcopy(p.config)
    changed["train"]["weight_decay"] = 0.1
    assert store(changed) == config_hash(p.config)  # another value: another run
    old["train"]["lr"] = 0.5
    assert store(old) == config_hash(p.config)


def test_a_polymnist_run_keeps_its_identity_when_a_component_gains_an_option(tmp_path, plugins):
    """PolyMNIST's config needs data.path, so an all-defaults config of the run's components did not
    validate, there were no defaults to compare with, and every finished polymnist run of a bench
    looked changed (and was trained again) after mmgen gained any option."""
    bench = tmp_path / "b.yaml"
    bench.write_text(f"budget: {{epochs: 1}}\ndata: polymnist:{tmp_path}\nruns: [{{name: e, recipe: ebm-mmvae}}]\n")
    p = make_plan(load_spec(bench), tmp_path / "out").runs[0]
    p.run_dir.mkdir(parents=True)
    old = copy.deepcopy(p.config)
    del old["model"]["prior"]["amsgrad"]  # a component option the run predates, at its default now
    (p.run_dir / "config.yaml").write_text(yaml.safe_dump(old))
    (p.run_dir / "bench.json").write_text(json.dumps({"config_hash": config_hash(old)}))
    assert identity(p.run_dir, p.config, plugins.registry) == config_hash(old) != config_hash(p.config)


def _record_env(path, cwd=None, env=None, threads=0):
    """A worker task for the launcher test: write down what the process was given."""
    env = env or {}
    Path(path).write_text(json.dumps({"gpu": env.get("CUDA_VISIBLE_DEVICES"), "parent": env.get(PARENT_ENV),
                                      "threads": threads}))
    return 0 if not path.endswith("t3.json") else 3


def test_jobs_run_as_separate_processes_one_gpu_each(tmp_path):
    import os

    launcher = LocalLauncher(jobs=2, gpus=["3", "5"])
    assert launcher.slots() == ["3", "5"]
    tasks = [Task(f"t{i}", _record_env, (str(tmp_path / f"t{i}.json"),), tmp_path / "log") for i in range(4)]
    ended = []
    codes = launcher.run(tasks, lambda t, where: None, lambda t, code: ended.append(t.label))
    assert codes == {"t0": 0, "t1": 0, "t2": 0, "t3": 3} and sorted(ended) == ["t0", "t1", "t2", "t3"]
    seen = [json.loads((tmp_path / f"t{i}.json").read_text()) for i in range(4)]
    assert sorted(r["gpu"] for r in seen[:2]) == ["3", "5"] and {r["gpu"] for r in seen} == {"3", "5"}
    assert all(r["parent"] == str(os.getpid()) and r["threads"] == 0 for r in seen)
    assert LocalLauncher(jobs=3, gpus=["0"]).slots() == [None, None, None]  # one GPU: shared, env untouched


def _sleep(seconds, cwd=None, env=None, threads=0):
    """A worker task that outlives the test unless terminated."""
    import time

    time.sleep(seconds)
    return 0


def test_an_interrupted_launcher_terminates_its_processes_and_says_so(tmp_path):
    def on_start(task, where):
        raise KeyboardInterrupt  # Ctrl-C while the task runs

    ended = []
    with pytest.raises(KeyboardInterrupt):
        LocalLauncher(jobs=1, gpus=[]).run([Task("t", _sleep, (60,), tmp_path / "log")], on_start,
                                           lambda *args: ended.append(args[1:]))
    assert ended == [(-15, True)]  # SIGTERM, and flagged as an interruption, not a failure


@pytest.fixture
def ctrl_c_raises():
    """SIGINT raises KeyboardInterrupt, as in a terminal. A test run started in the background by a
    non-interactive shell (``cmd &``, as CI may) inherits SIGINT ignored, and Python leaves it so:
    a Ctrl-C test then waited for its worker (or, with a job that never ends, forever)."""
    import signal

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


class _InterruptedWhileStarting(__import__("multiprocessing").context.ForkServerProcess):
    """A worker process whose start() is interrupted by Ctrl-C at its very end: the worker exists
    (forked, its pid known) but the launcher has not recorded it yet."""

    def start(self):
        import os
        import signal
        import time

        super().start()
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.5)  # the Python-level handler runs here, still inside start()


def test_ctrl_c_while_a_worker_starts_terminates_it_and_says_so(tmp_path, ctrl_c_raises):
    """The first start launches the fork server (seconds of imports): a Ctrl-C or kill then used to
    leave the forked worker unrecorded, so it was neither terminated nor reported interrupted (it
    trained on until its parent-watch stopped it, and recorded itself as failed)."""
    import multiprocessing
    import types

    launcher = LocalLauncher(jobs=1, gpus=[])
    launcher.ctx = types.SimpleNamespace(Process=_InterruptedWhileStarting)
    ended = []
    try:
        with pytest.raises(KeyboardInterrupt):
            launcher.run([Task("t", _sleep, (30,), tmp_path / "log")], lambda task, where: None,
                         lambda *args: ended.append(args[1:]))
        assert ended == [(-15, True)]  # terminated, and flagged as an interruption
    finally:
        for child in multiprocessing.active_children():  # without the fix: the orphan still sleeps
            child.terminate()


class InterruptingLauncher:
    """As LocalLauncher when Ctrl-C comes while the first run trains: that run's worker is
    stopped (having seen the Ctrl-C itself and recorded a failure, or not), the others never start."""

    def __init__(self, worker_saw_it: bool):
        self.worker_saw_it = worker_saw_it

    def run(self, tasks, on_start, on_done):
        if tasks[0].label == "prepare":
            return {"prepare": 0}
        state_file = Path(tasks[0].log).parent / "bench.json"
        state = json.loads(state_file.read_text())
        if self.worker_saw_it:
            state.update(status="failed", error="training failed (exit code 130): interrupted")
        else:
            state.update(status="training")
        state_file.write_text(json.dumps(state))
        on_done(tasks[0], 1 if self.worker_saw_it else -15, True)
        raise KeyboardInterrupt


@pytest.mark.parametrize("worker_saw_it", [False, True])
def test_runs_stopped_by_an_interruption_are_reported_as_interrupted_not_failed(tmp_path, worker_saw_it):
    import io

    from rich.console import Console

    from mmgen.bench import execute, write_report

    plan = make_plan(load_spec(write(tmp_path, TINY_BENCH % ("", "{}", ", seeds: [0, 1]"))), tmp_path / "out")
    console = Console(file=(printed := io.StringIO()), width=200)
    with pytest.raises(KeyboardInterrupt):
        execute(plan, InterruptingLauncher(worker_saw_it), console)
    reason = "stopped while training; the same command continues it" if not worker_saw_it else \
        "stopped while running; the same command continues it"
    state = json.loads((tmp_path / "out" / "runs" / "a-s0" / "bench.json").read_text())
    assert (state["status"], state["error"]) == ("interrupted", reason)  # was failed: stopped by signal 15
    assert f"interrupted a-s0: {reason}" in printed.getvalue() and "failed" not in printed.getvalue()
    report, _ = write_report(plan)
    assert [(r["status"], r["error"]) for r in report["runs"]] == [("interrupted", reason), ("incomplete", None)]
    assert report["summary"][0]["failed"] == 0
    assert f"`a` seed 0 — interrupted: {reason}" in (tmp_path / "out" / "results.md").read_text()
    assert make_plan(plan.spec, tmp_path / "out").runs[0].action == "train"  # no checkpoint yet: trains again


def test_an_interrupted_benchmark_still_writes_its_report(tmp_path, monkeypatch):
    """Ctrl-C or kill used to exit without a report: results.md was missing, or still showed the
    previous invocation's table (runs since removed or changed in the bench file)."""
    import mmgen.bench

    monkeypatch.setattr(mmgen.bench, "make_launcher", lambda name, plan, jobs: InterruptingLauncher(False))
    result = invoke("bench", write(tmp_path, TINY_BENCH % ("", "{}", ", seeds: [0, 1]")), "--out", tmp_path / "out")
    assert result.exit_code == 130, result.output
    md = (tmp_path / "out" / "results.md").read_text()
    assert "`a` seed 0 — interrupted: stopped while training; the same command continues it" in md
    assert "| a | 0/2 |" in md and (tmp_path / "out" / "results.json").is_file()


def test_submitit_local_executor_runs_a_run(smoke, tmp_path):
    """The Slurm path (submitit), tested with submitit's local executor on one run to evaluate."""
    pytest.importorskip("submitit")
    src, _ = smoke
    out = tmp_path / "smoke"
    shutil.copytree(src, out)
    (out / "runs" / "mmvae-s1" / "eval.json").unlink()
    result = invoke("bench", SMOKE, "--out", out, "--launcher", "submitit-local")
    assert result.exit_code == 0, result.output
    assert "started mmvae-s1 (job" in result.output and "started prepare" not in result.output
    assert (out / "runs" / "mmvae-s1" / "eval.json").is_file()
    assert any((out / "submitit").iterdir())
    report = json.loads((out / "results.json").read_text())
    assert all(e["finished"] == 2 for e in report["summary"])


def test_an_interrupted_slurm_benchmark_cancels_its_jobs_and_reports_them_interrupted(smoke, tmp_path, monkeypatch):
    """Ctrl-C while the scheduler runs the jobs: each job not done is cancelled and its run is
    recorded as interrupted (it used to stay "incomplete"), and the benchmark stops. The executor
    stands in for Slurm's: jobs that never finish."""
    import io

    from rich.console import Console

    from mmgen.bench import execute
    from mmgen.bench import launch as launch_module
    from mmgen.bench.launch import SubmititLauncher

    class Job:
        def __init__(self, i):
            self.job_id, self.cancelled = str(1000 + i), False

        def done(self):
            return False

        def cancel(self, check=True):
            self.cancelled = True

    class Executor:
        def __init__(self):
            self.jobs = []

        def update_parameters(self, **params):
            pass

        def submit(self, fn, *args):
            self.jobs.append(Job(len(self.jobs)))
            return self.jobs[-1]

    src, _ = smoke
    out = tmp_path / "smoke"
    shutil.copytree(src, out)
    for run in ("mmvae-s1", "ebm-mmvae-s0"):
        (out / "runs" / run / "eval.json").unlink()  # to evaluate again; the data are prepared
    plan = make_plan(load_spec(SMOKE), out)
    launcher = object.__new__(SubmititLauncher)
    launcher.name, launcher.executor = "slurm", Executor()

    def ctrl_c(seconds):
        raise KeyboardInterrupt

    monkeypatch.setattr(launch_module.time, "sleep", ctrl_c)
    console = Console(file=io.StringIO(), width=200)
    with pytest.raises(KeyboardInterrupt):
        execute(plan, launcher, console)
    assert [job.cancelled for job in launcher.executor.jobs] == [True, True]
    for run in ("mmvae-s1", "ebm-mmvae-s0"):
        state = json.loads((out / "runs" / run / "bench.json").read_text())
        assert state["status"] == "interrupted" and "the same command continues it" in state["error"]
    assert "interrupted mmvae-s1" in console.file.getvalue()


def test_ctrl_c_while_a_job_is_submitted_cancels_it(tmp_path, ctrl_c_raises):
    """A Ctrl-C during submit() (sbatch) used to leave the job submitted but unrecorded: never
    cancelled, never reported."""
    import os
    import signal

    from mmgen.bench.launch import SubmititLauncher

    class Job:
        job_id, cancelled = "1000", False

        def done(self):
            return False

        def cancel(self, check=True):
            self.cancelled = True

    class Executor:
        job = Job()

        def update_parameters(self, **params):
            pass

        def submit(self, fn, *args):
            os.kill(os.getpid(), signal.SIGINT)  # arrives while sbatch runs
            for _ in range(100):
                pass  # the Python-level handler runs here, inside submit()
            return self.job

    launcher = object.__new__(SubmititLauncher)
    launcher.name, launcher.executor = "slurm", Executor()
    ended = []
    with pytest.raises(KeyboardInterrupt):
        launcher.run([Task("t", _sleep, (1,), tmp_path / "log")], lambda task, where: None,
                     lambda *args: ended.append(args[1:]))
    assert launcher.executor.job.cancelled and ended == [(-15, True)]


def test_slurm_launcher_without_submitit_says_how_to_install(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "submitit", None)  # as if not installed
    spec = load_spec(SMOKE)
    plan = make_plan(spec, tmp_path / "out")
    from mmgen.bench import make_launcher

    with pytest.raises(MMGenError, match=r"pip install 'mmgen\[slurm\]'"):
        make_launcher("slurm", plan, 1)


def test_cross_given_is_checked_against_the_loaded_data_before_training(tmp_path, monkeypatch, capsys, plugins):
    # With every modality on disk (polymnist, modalities: 0) the count is known only once the data
    # loads: the prepare step, which runs before any training, checks it then.
    import torch

    from mmgen.bench import worker
    from mmgen.config import compose, resolve

    for split in ("train", "test"):
        (tmp_path / "pm" / split).mkdir(parents=True)
        for m in range(2):
            torch.save(torch.zeros(4, 3, 28, 28, dtype=torch.uint8), tmp_path / "pm" / split / f"m{m}.pt")
        torch.save(torch.arange(4), tmp_path / "pm" / split / "labels.pt")
    cfg = resolve(compose(overrides=["data.name=polymnist", f"data.path={tmp_path / 'pm'}"]), plugins.registry)
    assert worker.check_cross_given([5], cfg["data"]) == []  # the config alone cannot tell
    monkeypatch.setattr(worker, "_enter", lambda *args: None)  # the real one redirects this process's output
    code = worker.prepare_classifiers(None, cfg, None, str(tmp_path / "prepare.log"), [0, 5])
    assert code == 1
    assert "error: report.cross_given: modality 5 does not exist (the data has 2 modalities; valid: 0..1)" \
        in capsys.readouterr().out
    # So are the indices of the table's columns.
    columns = ["cross_coherence/mean_1to1", "fd/unconditional/1", "fd/unconditional/2"]
    assert worker.check_column_indices(columns, plugins.registry, cfg["data"]) == []  # unknown count
    code = worker.prepare_classifiers(None, cfg, None, str(tmp_path / "prepare.log"), [0], columns)
    assert code == 1
    assert "error: evaluate.columns[2]: 'fd/unconditional/2': index 2 is out of range; unconditional has 2 entries " \
           "with 2 modalities (valid: 0..1)" in capsys.readouterr().out


def test_no_classifiers_are_trained_when_no_metric_needs_them(tmp_path, monkeypatch, capsys, plugins):
    """The prepare step trained the digit classifiers for a bench evaluating only nll (minutes on a CPU)."""
    from mmgen.bench import worker
    from mmgen.config import compose, resolve

    cfg = resolve(compose(overrides=["data.modalities=2", "data.train_size=64", "data.test_size=32"]), plugins.registry)
    monkeypatch.setattr(worker, "_enter", lambda *args: None)  # the real one redirects this process's output
    target = tmp_path / "classifiers.pt"
    assert worker.prepare_classifiers(str(target), cfg, None, str(tmp_path / "log"), metrics=["nll", "probe"]) == 0
    assert "no classifiers needed by nll, probe" in capsys.readouterr().out and not target.exists()
    trained = []
    monkeypatch.setattr("mmgen.classifiers.ensure_classifiers", lambda *args, **kwargs: trained.append(args) or
                        type("C", (), {"meta": {}})())
    assert worker.prepare_classifiers(str(target), cfg, None, str(tmp_path / "log"), metrics=["nll", "fd"]) == 0
    assert len(trained) == 1  # fd judges with them


def test_a_bench_file_does_not_train_over_another_files_runs(tmp_path, monkeypatch):
    """A copy of a bench file, edited into a new comparison, keeps its name: and so its folder,
    where its same-named runs looked changed and were trained over the original's."""
    from mmgen.bench.plan import OWNER_FILE, check_owner, claim_owner

    monkeypatch.chdir(tmp_path)
    text = "name: t\nbudget: {max_steps: 1}\nruns: [{name: a, recipe: mmvae}]\n"
    (tmp_path / "one").mkdir(), (tmp_path / "two").mkdir()
    original, copy_ = tmp_path / "one" / "t.yaml", tmp_path / "two" / "t.yaml"
    original.write_text(text)
    copy_.write_text(text.replace("mmvae}", "mmvae, overrides: [model.latent_dim=3]}"))
    bench_dir = Path("bench") / "t"
    claim_owner(load_spec(original), bench_dir)
    assert json.loads((bench_dir / OWNER_FILE).read_text()) == {"file": str(original.resolve())}
    check_owner(load_spec(original), bench_dir, explicit_out=False)  # its own folder
    check_owner(load_spec(copy_), bench_dir, explicit_out=True)  # adopted deliberately with --out
    with pytest.raises(MMGenError, match="holds the runs of another bench file"):
        check_owner(load_spec(copy_), bench_dir, explicit_out=False)
    result = invoke("bench", copy_, "--dry-run")
    assert result.exit_code == 2 and "give this one its own name:" in result.output
    assert invoke("bench", copy_, "--dry-run", "--out", bench_dir).exit_code == 0


def test_a_moved_or_renamed_bench_file_keeps_its_runs(tmp_path, monkeypatch):
    """The owner record names the file's old path after a move or rename: the same file was refused
    as "another bench file", naming one that no longer exists."""
    from mmgen.bench.plan import check_owner, claim_owner

    monkeypatch.chdir(tmp_path)
    (tmp_path / "one").mkdir()
    old = tmp_path / "one" / "t.yaml"
    old.write_text("name: t\nbudget: {max_steps: 1}\nruns: [{name: a, recipe: mmvae}]\n")
    bench_dir = Path("bench") / "t"
    claim_owner(load_spec(old), bench_dir)
    moved = old.rename(tmp_path / "t-renamed.yaml")
    check_owner(load_spec(moved), bench_dir, explicit_out=False)


def test_a_curve_no_run_logged_is_named_with_what_was_logged(tmp_path, smoke):
    """Validation accepts any prior/... or objective/... statistic (what a component logs is only
    known once it ran); a curve that no finished run logged gets a note, not a silent gap."""
    from mmgen.bench.plots import write_plots

    run_dir = tmp_path / "runs" / "a-s0"
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text("".join(
        json.dumps({"step": s, "loss": 2.0 / s, "prior/energy_pos": 0.1 * s}) + "\n" for s in (1, 2, 3)))
    report = {"runs": [{"run": "a", "seed": 0, "status": "finished", "run_dir": str(run_dir)}],
              "summary": [], "columns": []}
    paths = write_plots(report, tmp_path / "plots", ["loss", "prior/energy_po"])
    assert [p.name for p in paths] == ["curves-loss.png"]
    assert report["notes"] == ["report.curves: no finished run logged 'prior/energy_po' (did you mean "
                               "'prior/energy_pos'?), so it has no plot; logged: loss, prior/energy_pos"]
    # Unfinished runs only: nothing can have been logged, so no note.
    report = {"runs": [{"run": "a", "seed": 0, "status": "failed", "run_dir": str(run_dir)}],
              "summary": [], "columns": []}
    write_plots(report, tmp_path / "plots", ["prior/energy_po"])
    assert "notes" not in report
    # results.md lists the notes under the table
    from mmgen.bench.report import markdown

    full = json.loads((smoke[0] / "results.json").read_text())
    assert "notes" not in full  # the smoke benchmark's curves were all logged
    assert "\nNotes:\n\n- n1\n\nMade by mmgen" in markdown({**full, "notes": ["n1"]})  # then the provenance line
