"""Beyond one process: DDP through torchrun (gloo on CPUs), fold-parallel jobs and their merge, device choice."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from audiotag import cli
from audiotag.augment.spec import Mixup, SpecAugment
from audiotag.engine import distributed
from audiotag.engine.checkpoint import load_checkpoint, save_checkpoint
from audiotag.engine.precision import inference_precision, resolve_device
from audiotag.engine.trainer import Trainer
from audiotag.errors import AudiotagError
from audiotag.runs import DataSpec, Run
from audiotag.training.train import merge, train

from test_train import TINY, read, tiny

# ----------------------------------------------------------------------------- the trainer under DDP


class TinyNet(nn.Module):
    """No batch norm, so a sharded batch must give exactly the whole batch's gradient."""

    def __init__(self, dropout: float = 0.0):
        super().__init__()
        self.drop, self.fc = nn.Dropout(dropout), nn.Linear(4 * 6, 3)

    def forward(self, x):
        return {"logits": self.fc(self.drop(x.flatten(1)))}


def _batches(epoch: int, batch: int):
    g = torch.Generator().manual_seed(100 + epoch)
    for _ in range(3):
        yield torch.randn(batch, 1, 4, 6, generator=g), (torch.rand(batch, 3, generator=g) > 0.5).float()


def _trainer(dropout: float) -> Trainer:
    torch.manual_seed(0)
    model = TinyNet(dropout)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    transforms = [SpecAugment(time_masks=1, time_mask_frames=2, freq_masks=1, freq_mask_bins=1, seed=1),
                  Mixup(alpha=0.4, prob=1.0, targets="weighted", seed=2)]
    if distributed.rank():
        torch.manual_seed(7919 * distributed.rank())
    return Trainer(model, optimizer=opt, scheduler=sched, transforms=transforms, device=torch.device("cpu"),
                   grad_clip=1.0)


def _fit(trainer: Trainer, epochs: int, batch: int):
    trainer.fit(epochs=epochs, batches_for=lambda e: _batches(e, batch), evaluate=lambda: {})


def _worker(rank: int, world: int, port: int, out: str, task: str, batch: int):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    distributed.setup(torch.device("cpu"))
    try:
        if task == "fit":
            trainer = _trainer(0.0)
            _fit(trainer, 2, batch)
        elif task == "dropout-straight":
            trainer = _trainer(0.5)
            _fit(trainer, 4, batch)
        elif task == "dropout-first-half":
            trainer = _trainer(0.5)
            _fit(trainer, 2, batch)
            save_checkpoint(out + ".ckpt", {"trainer": trainer.state_dict()})  # a collective: every rank calls it
        else:  # "dropout-second-half": new processes continue from the checkpoint
            trainer = _trainer(0.5)
            trainer.load_state_dict(load_checkpoint(out + ".ckpt")["trainer"])
            _fit(trainer, 4, batch)
        if rank == 0:
            torch.save({"params": trainer.model.state_dict(), "loss": trainer.history[-1]["train_loss"]}, out)
    finally:
        distributed.teardown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(tmp_path, task: str, batch: int, name: str):
    out = str(tmp_path / name)
    for attempt in range(2):
        try:
            torch.multiprocessing.start_processes(_worker, args=(2, _free_port(), out, task, batch), nprocs=2,
                                                  start_method="spawn")
            break
        except torch.multiprocessing.ProcessExitedException as e:
            # Rarely a rank aborts inside gloo's own teardown at exit ("terminate called without an
            # active exception", SIGABRT) after our barrier and destroy_process_group: seen twice in
            # full-suite runs, never alone (0 of 40 spawns in a loop). One retry; any other failure,
            # or a second abort, fails the test.
            if attempt or e.signal_name != "SIGABRT":
                raise
    return torch.load(out, weights_only=True)


@pytest.mark.parametrize("batch", [8, 7])  # 7: unequal shares, which the loss weighting must even out
def test_two_processes_take_the_same_steps_as_one(tmp_path, batch):
    one = _trainer(0.0)
    _fit(one, 2, batch)
    two = _spawn(tmp_path, "fit", batch, "two.pt")
    for name, p in one.model.state_dict().items():
        torch.testing.assert_close(two["params"][name], p, rtol=0, atol=1e-6)
    assert two["loss"] == pytest.approx(one.history[-1]["train_loss"], abs=1e-6)  # the whole batch's loss
    moved = (one.model.fc.weight - _trainer(0.0).model.fc.weight).abs().max()
    assert moved > 1e-2  # the comparison is not between two untrained models


def test_a_ddp_checkpoint_resumes_exactly_with_every_rank_own_random_stream(tmp_path):
    straight = _spawn(tmp_path, "dropout-straight", 8, "straight.pt")
    _spawn(tmp_path, "dropout-first-half", 8, "cut.pt")
    resumed = _spawn(tmp_path, "dropout-second-half", 8, "cut.pt")
    for name, p in straight["params"].items():
        assert torch.equal(resumed["params"][name], p), name
    ranks = load_checkpoint(str(tmp_path / "cut.pt") + ".ckpt")["trainer"]["rng_ranks"]
    assert len(ranks) == 2 and not torch.equal(ranks[0]["torch"], ranks[1]["torch"])


# ----------------------------------------------------------------------------- torchrun end to end


def _table(path):
    return pd.read_csv(path).set_index("fname").drop(columns=["fold"], errors="ignore").sort_index()


def test_torchrun_two_processes_match_one_within_tolerance(demo_data, tmp_path):
    # The tolerance below was set for the VGG; with the MobileNet the mean difference measured 0.031
    # (likely its three batch norms per unit, each normalising a half batch), not a wiring fault.
    # The zoomed crops are off: each rank draws its own zooms, and with them on the difference measured 0.033.
    settings = ["train.threads=1", "model.name=vgg", "augment.resized_crop_prob=0"]
    sets = [a for s in TINY + settings for a in ("--set", s)]
    common = ["--data", str(demo_data), "--cache-dir", str(tmp_path / "cache"), "-q", *sets]
    one = train(DataSpec(root=str(demo_data)), tiny(*settings), out=tmp_path / "one",
                cache_dir=tmp_path / "cache", progress=False)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "audiotag", "train", "--out", str(tmp_path / "two"), *common]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    two = Run.open(tmp_path / "two")
    assert two.info["processes"] == 2 and two.info["status"] == "done"
    # Stated tolerance: batch norm normalises each process's half batch, so the runs differ a little.
    for name in ("oof_predictions.csv", "test_predictions.csv"):
        a, b = _table(one.dir / name), _table(two.dir / name)
        assert list(a.index) == list(b.index) and list(a.columns) == list(b.columns)
        diff = np.abs(a.values - b.values)
        assert diff.mean() < 0.03 and np.corrcoef(a.values.ravel(), b.values.ravel())[0, 1] > 0.98, name
    # Only rank 0 wrote: one log line per event, no scratch files left behind.
    assert (two.dir / "log.txt").read_text().count("OOF lwlrap") == 1
    assert not list(two.dir.rglob(".tmp-*"))


# ----------------------------------------------------------------------------- fold-parallel jobs


def _fold_job(demo_data, tmp_path, k, *extra):
    sets = [a for s in TINY + ["train.threads=1", *extra] for a in ("--set", s)]
    return subprocess.Popen([sys.executable, "-m", "audiotag", "train", "--data", str(demo_data), "--out",
                             str(tmp_path / "parallel"), "--fold", str(k), "--cache-dir", str(tmp_path / "cache"),
                             "-q", *sets], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_fold_jobs_at_once_then_merge_equal_the_serial_run(demo_data, tmp_path, capsys):
    serial = train(DataSpec(root=str(demo_data)), tiny("train.threads=1"), out=tmp_path / "serial",
                   cache_dir=tmp_path / "cache", progress=False)
    jobs = [_fold_job(demo_data, tmp_path, k) for k in (1, 0)]  # started together: they race to create the folder
    for job in jobs:
        _, err = job.communicate(timeout=600)
        assert job.returncode == 0, err[-3000:]
    parallel = Run.open(tmp_path / "parallel")
    assert parallel.info["status"] == "done"  # the last job to finish assembled the run
    for name in ("oof_predictions.csv", "test_predictions.csv", "folds.csv"):
        assert read(parallel.dir / name) == read(serial.dir / name), name
    first = read(parallel.dir / "oof_predictions.csv")
    (parallel.dir / "scores.json").unlink()
    assert cli.main(["merge", str(parallel.dir), "-q"]) == 0
    assert read(parallel.dir / "oof_predictions.csv") == first
    for key in ("oof_lwlrap", "fold_lwlrap", "test_lwlrap", "epochs"):
        assert parallel.scores[key] == serial.scores[key], key
    assert not list(parallel.dir.glob("fold_*/.claimed"))  # each job released its fold


def test_fold_job_mistakes_get_clear_errors(demo_data, tmp_path, capsys):
    data = DataSpec(root=str(demo_data))
    with pytest.raises(AudiotagError, match="--fold needs --out"):
        train(data, tiny(), fold=0, cache_dir=tmp_path / "cache", progress=False)
    train(data, tiny("train.threads=1"), out=tmp_path / "p", fold=0, cache_dir=tmp_path / "cache", progress=False)
    run = Run.open(tmp_path / "p")
    assert not (run.dir / "scores.json").exists() and (run.fold_dir(0) / "done.json").exists()
    assert "waiting for fold(s) 1" in (run.dir / "log.txt").read_text()

    def trained(k):
        return json.loads((run.fold_dir(k) / "done.json").read_text())["train_seconds"]

    assert run.info["wall_seconds"] >= trained(0) > 0  # each job counts its own time in the run's minutes
    with pytest.raises(AudiotagError, match=r"fold\(s\) 1 are not done") as e:
        merge(run.dir, progress=False)
    assert f"--resume {run.dir} --fold 1" in e.value.hint
    with pytest.raises(AudiotagError, match="different config"):
        train(data, tiny("train.threads=1", "model.width=16"), out=run.dir, fold=1, cache_dir=tmp_path / "cache",
              progress=False)
    with pytest.raises(AudiotagError, match="folds 0 to 1"):
        train(data, tiny("train.threads=1"), out=run.dir, fold=2, cache_dir=tmp_path / "cache", progress=False)
    # A job on another machine may differ in where it computes, not in what.
    train(data, tiny("train.threads=2", "train.device=cpu"), out=run.dir, fold=1, cache_dir=tmp_path / "cache",
          progress=False)
    assert Run.open(run.dir).info["status"] == "done" and (run.dir / "scores.json").exists()
    assert Run.open(run.dir).info["wall_seconds"] >= trained(0) + trained(1)


def test_a_fold_being_trained_elsewhere_is_not_trained_twice(demo_data, tmp_path):
    data = DataSpec(root=str(demo_data))
    train(data, tiny(), out=tmp_path / "p", fold=0, cache_dir=tmp_path / "cache", progress=False)
    run = Run.open(tmp_path / "p")
    (run.fold_dir(1)).mkdir()
    (run.fold_dir(1) / ".claimed").write_text(str(os.getppid()))  # a live process holds fold 1
    with pytest.raises(AudiotagError, match="fold 1 of .* is being trained by another process"):
        train(data, tiny(), out=run.dir, fold=1, cache_dir=tmp_path / "cache", progress=False)


# ----------------------------------------------------------------------------- device choice


def test_device_selection_falls_back_cleanly():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(AudiotagError, match="no CUDA device"):
            resolve_device("cuda")
    assert inference_precision("fp16", torch.device("cpu")) == "fp32"
    assert inference_precision("bf16", torch.device("cpu")) == "bf16"


def test_device_flag_reaches_the_config():
    parser = cli.build_parser()
    args = parser.parse_args(["train", "--data", "x", "--device", "cpu", "--fold", "1"])
    assert cli.options.config_of(args).train.device == "cpu" and args.fold == 1
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--data", "x", "--device", "tpu"])
    assert parser.parse_args(["predict", "r", "--out", "s.csv", "--device", "cpu"]).device == "cpu"
    assert parser.parse_args(["tag", "a.wav", "--run", "r"]).device is None  # None: auto


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_augmentation_on_the_gpu_draws_what_the_cpu_draws():
    x, y = torch.randn(6, 1, 8, 10), torch.rand(6, 3)
    cpu = [SpecAugment(time_masks=2, time_mask_frames=3, freq_masks=1, freq_mask_bins=2, seed=3),
           Mixup(alpha=0.4, prob=1.0, targets="weighted", seed=4)]
    gpu = [SpecAugment(time_masks=2, time_mask_frames=3, freq_masks=1, freq_mask_bins=2, seed=3),
           Mixup(alpha=0.4, prob=1.0, targets="weighted", seed=4)]
    a, b = (x, y), (x.cuda(), y.cuda())
    for t_cpu, t_gpu in zip(cpu, gpu):
        a, b = t_cpu(*a), t_gpu(*b)
    torch.testing.assert_close(b[0].cpu(), a[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(b[1].cpu(), a[1], rtol=1e-5, atol=1e-5)
