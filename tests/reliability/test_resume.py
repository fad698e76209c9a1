"""Crash and resume: a ``tgalore fit`` subprocess killed mid-epoch with SIGKILL resumes with ``--ckpt_path last`` to
a bit-identical final state (parameters, moments, factors, callback state); SIGTERM saves a checkpoint first.

The tiny config (``configs/tests/tiny.yaml``) checkpoints every 2 steps, refreshes the subspaces at steps 0, 3, 6,
9, ... and changes the rank at step 7; 8 steps per epoch, 16 in all. ``PauseAt`` blocks the run before a chosen step
so the kill lands at a known point; the resumed run recomputes the steps after the last checkpoint.
"""

from __future__ import annotations

import signal

import pytest

from datamodules.base import EpochShuffleSampler, ResumableDataLoader

from .conftest import last_ckpt
from .helpers import (
    PauseAt,
    assert_same_training_state,
    callback_arg,
    kill_group,
    load,
    run,
    start,
    tiny_args,
    wait_for,
)

SUBSPACE = "SubspaceScheduler{'refresh': 'fixed'}"


def _kill_at(root, data_dir, step: int, sig: int = signal.SIGKILL) -> tuple[int, str]:
    """Run the tiny job under ``root``, stop it with ``sig`` just before optimizer step ``step``; (status, log)."""
    marker, log = root / "paused.json", root / "killed.log"
    proc = start(tiny_args(root, data_dir, callback_arg(PauseAt, step=step, marker=str(marker))), log)
    wait_for(marker, proc, log)
    status = kill_group(proc, sig)
    return status, log.read_text()


# ------------------------------------------------------------------------------------------ SIGKILL


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kill_before", "saved_at", "where"),
    [
        (5, 4, "epoch 0, between the refreshes at steps 3 and 6"),
        (9, 8, "epoch 1's first step; the step-8 checkpoint is written at the end of epoch 0, after validation"),
        (11, 10, "epoch 1, after the rank change at step 7, between the refreshes at steps 9 and 12"),
    ],
)
def test_sigkill_mid_epoch_then_resume_last_is_bit_identical_to_an_uninterrupted_run(
    tmp_path, tiny_data_dir, tiny_reference, kill_before, saved_at, where
):
    status, _ = _kill_at(tmp_path, tiny_data_dir, kill_before)
    assert status == -signal.SIGKILL
    at_kill = load(last_ckpt(tmp_path))
    assert at_kill["global_step"] == saved_at, where
    position = at_kill["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]
    assert position == {"epoch": saved_at // 8 if saved_at % 8 else saved_at // 8 - 1, "batches": saved_at % 8 or 8}
    refreshed = set(at_kill["callbacks"][SUBSPACE]["last_refresh"].values())
    assert refreshed == {max(s for s in (0, 3, 6, 7, 9, 12, 15) if s < saved_at)}, where
    galore_ranks = {g["rank"] for g in at_kill["optimizer_states"][0]["param_groups"] if g["galore"]}
    assert galore_ranks == ({0.25} if saved_at > 7 else {0.5})

    run(tiny_args(tmp_path, tiny_data_dir, "--ckpt_path=last"))
    ref_root, ref = tiny_reference
    final = load(last_ckpt(tmp_path))
    assert final["global_step"] == 16
    assert_same_training_state(ref, ref_root, final, tmp_path)


# ------------------------------------------------------------------------------------------ SIGTERM


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_exits_143_and_the_run_resumes_exactly(tmp_path, tiny_data_dir, tiny_reference):
    # Paused before step 4; the step runs, then Lightning raises SIGTERMException and save_on_exception writes
    # a checkpoint at global step 5, which is not on the 2-step cadence, and last.ckpt.
    status, log = _kill_at(tmp_path, tiny_data_dir, 4, signal.SIGTERM)
    assert status == 143, log[-3000:]  # 128 + SIGTERM, not 0: a scheduler must not take it for a finished job
    assert "Received SIGTERM" in log and "resume with `--ckpt_path last`" in log
    ckpt_dir = last_ckpt(tmp_path).parent
    assert (ckpt_dir / "interrupted-step000005.ckpt").is_file()  # named as what it is, not by a stale score
    assert load(last_ckpt(tmp_path))["global_step"] == 5

    run(tiny_args(tmp_path, tiny_data_dir, "--ckpt_path=last"))
    ref_root, ref = tiny_reference
    assert_same_training_state(ref, ref_root, load(last_ckpt(tmp_path)), tmp_path)


# ------------------------------------------------------------------------------------------ the resumable loader


def _loader(n=10, batch_size=3, seed=0):
    return ResumableDataLoader(list(range(n)), batch_size=batch_size, sampler=EpochShuffleSampler(n, seed))


def _batches(loader):
    return [b.tolist() for b in loader]


def test_resumable_loader_resumes_with_the_batches_not_yet_seen():
    full = _loader()
    full.sampler.set_epoch(3)
    expected = _batches(full)

    first = _loader()
    first.sampler.set_epoch(3)
    it = iter(first)
    seen = [next(it).tolist(), next(it).tolist()]
    state = first.state_dict()
    assert state == {"epoch": 3, "batches": 2}

    resumed = _loader()
    resumed.load_state_dict(state)
    it = iter(resumed)  # Lightning creates the iterator before it calls set_epoch
    resumed.sampler.set_epoch(3)
    assert seen + [b.tolist() for b in it] == expected
    assert resumed.state_dict() == {"epoch": 3, "batches": 4}


def test_resumable_loader_saved_at_the_end_of_an_epoch_starts_the_next_one_whole():
    loader = _loader()
    loader.load_state_dict({"epoch": 3, "batches": 4})
    assert loader.sampler.epoch == 4
    other = _loader()
    other.sampler.set_epoch(4)
    assert _batches(loader) == _batches(other)


def test_resumable_loader_skips_only_in_the_epoch_it_was_saved_in():
    loader = _loader()
    loader.load_state_dict({"epoch": 1, "batches": 2})
    loader.sampler.set_epoch(2)  # e.g. a checkpoint of another run: the position does not apply
    assert len(_batches(loader)) == 4


def test_resumable_loader_skips_with_worker_processes():
    expected = _loader()
    expected.sampler.set_epoch(1)
    expected = _batches(expected)[1:]
    loader = ResumableDataLoader(list(range(10)), batch_size=3, sampler=EpochShuffleSampler(10, 0), num_workers=1)
    loader.load_state_dict({"epoch": 1, "batches": 1})  # sets the epoch before workers prefetch
    assert _batches(loader) == expected


def test_processes_share_one_permutation_so_their_batches_make_up_one_processes_batch():
    def loader(batch_size, world=1, rank=0):
        out = ResumableDataLoader(list(range(12)), batch_size=batch_size,
                                  sampler=EpochShuffleSampler(12, 0, num_replicas=world, rank=rank))
        out.sampler.set_epoch(5)
        return out

    one, r0, r1 = loader(4), loader(2, 2, 0), loader(2, 2, 1)
    global_batches = [sorted(a + b) for a, b in zip(_batches(r0), _batches(r1), strict=True)]
    assert global_batches == [sorted(b) for b in _batches(one)]
    resumed = loader(2, 2, 1)
    resumed.load_state_dict({"epoch": 5, "batches": 1})
    assert _batches(resumed) == _batches(r1)[1:]


def test_an_uneven_split_repeats_samples_so_every_process_has_as_many():
    shares = [list(EpochShuffleSampler(5, 0, num_replicas=2, rank=r)) for r in range(2)]
    assert [len(s) for s in shares] == [3, 3] and set(shares[0] + shares[1]) == set(range(5))
