"""Benchmarks: many runs, one protocol (``mmgen bench FILE``).

A bench file (YAML) lists runs — each a recipe and/or component choices plus overrides — and the
seeds, the one dataset, the one training budget and the one evaluation every run gets. This
package turns it into a *plan* and carries the plan out (:mod:`.spec` reads the file, :mod:`.plan`
decides, :mod:`.worker` is what runs in each run's process, :mod:`.launch` starts those processes
and collects the results, :mod:`.report` writes the tables and :mod:`.plots` the figures):

1. **Validate** (:func:`load_spec`, :func:`make_plan`): the file's structure, then every
   (run, seed) config through :func:`mmgen.config.resolve` and the metrics through the registry,
   all before anything starts; every problem is one line naming its key.
2. **Decide** what each run needs. A run's identity is a hash of its fully resolved config
   (``out`` and the progress-bar switch left out), kept in ``RUN_DIR/bench.json`` together with the
   hash of the evaluation settings its ``eval.json`` was made with. Same config and evaluation:
   skip. Same config, other evaluation: evaluate again. Same config, interrupted: resume from
   ``checkpoints/latest.pt``. A changed config: that run directory is deleted and trained anew;
   the other runs are untouched.
3. **Execute**: each run is its own process that runs ``mmgen train`` and then ``mmgen evaluate``
   (the CLI commands themselves, in that process) with its output in ``RUN_DIR/bench.log``, and
   writes ``bench-cross.png`` for the side-by-side cross-generation figure. A failed run is
   recorded in its ``bench.json`` and the others go on. Locally, ``--jobs N`` keeps N such
   processes running (one per GPU when several are visible); ``--launcher slurm`` hands them to
   Slurm through submitit.

Local worker processes are forked from a *fork server* that has imported torch and mmgen once,
so a run starts in milliseconds instead of paying several seconds of imports; the server only
imports (it runs no torch code and does not initialise CUDA), so forking it is safe, and every run
still gets a fresh process. A worker ends when the benchmark process does (Ctrl-C, ``kill``, even
``kill -9``), so a stopped benchmark leaves nothing training on its own.
"""

from __future__ import annotations

from mmgen.bench.launch import (LocalLauncher, SubmititLauncher, Task, execute, make_launcher, stage,
                                visible_gpus, write_report)
from mmgen.bench.plan import Plan, PlannedRun, commands, config_hash, decide, identity, make_plan
from mmgen.bench.spec import PARENT_ENV, BenchSpec, RunSpec, load_spec
from mmgen.bench.worker import execute_run, prepare_classifiers

__all__ = ["BenchSpec", "LocalLauncher", "PARENT_ENV", "Plan", "PlannedRun", "RunSpec", "SubmititLauncher", "Task",
           "commands", "config_hash", "decide", "execute", "execute_run", "identity", "load_spec", "make_launcher",
           "make_plan", "prepare_classifiers", "stage", "visible_gpus", "write_report"]
