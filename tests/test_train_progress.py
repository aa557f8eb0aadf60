"""`fit` draws the run's one progress bar from what rank 0 records in progress.json."""

from __future__ import annotations

from spatiotemporal.train.progress import FollowProgress, read_progress, write_progress


def test_rank_0s_position_and_postfix_are_read_back_whole(tmp_path):
    write_progress(tmp_path, 40, 960, loss="0.512", acc="0.81")
    assert read_progress(tmp_path) == {"step": 40, "total_steps": 960, "postfix": {"loss": "0.512", "acc": "0.81"}}


def test_the_bar_ends_at_the_last_recorded_step_with_its_postfix(tmp_path, capsys):
    with FollowProgress(tmp_path, "train tiny", interval=0.05):
        write_progress(tmp_path, 8, 8, top1="0.938")
    last = capsys.readouterr().err.replace("\r", "\n").splitlines()[-1]
    assert last.startswith("train tiny: 100%|") and "8/8" in last and last.rstrip().endswith("top1=0.938]")


def test_a_previous_runs_position_is_not_shown(tmp_path, capsys):
    write_progress(tmp_path, 960, 960)
    with FollowProgress(tmp_path, "train tiny", interval=0.05):
        pass
    assert capsys.readouterr().err == ""
