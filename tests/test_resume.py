"""Where a run starts, from the one `resume` setting (shakegpt.resume.start_point), on a real tiny run's
checkpoints; the exact resumes themselves are tests/test_faults.py's."""

import shutil

from omegaconf import OmegaConf

from shakegpt.resume import StartPoint, run_settings, start_point


def test_resume_false_true_a_path_or_a_requeue_decide_the_start(trained, tmp_path):
    folder = trained
    settings = run_settings(OmegaConf.to_container(OmegaConf.load(folder / "config.yaml")))
    last = folder / "checkpoints" / "last.ckpt"
    fresh, copy = tmp_path / "fresh", tmp_path / "copy"
    shutil.copytree(folder, copy)

    assert start_point(fresh, False, settings) == StartPoint()
    assert start_point(fresh, True, settings) == StartPoint()  # nothing to continue: from scratch
    from_path = start_point(fresh, str(folder), settings)  # a run folder: its last checkpoint
    assert (from_path.checkpoint, from_path.step, from_path.eval_pending) == (last, 20, True)
    assert start_point(copy, True, settings).checkpoint == copy / "checkpoints" / "last.ckpt"
    assert start_point(copy, False, settings) == StartPoint()
    # A requeued job continues its own folder, whatever it was started from.
    assert start_point(copy, str(folder), settings, requeued=True).checkpoint == copy / "checkpoints" / "last.ckpt"
    assert start_point(fresh, str(folder), settings, requeued=True).checkpoint == last


def test_the_trainers_class_and_sanity_check_may_change_on_a_resume():
    """Runs checkpointed before the evaluation before training was ours recorded shakegpt.resume.Trainer and
    200 sanity steps; they resume on Lightning's Trainer with none."""
    before = {"trainer": {"_target_": "shakegpt.resume.Trainer", "num_sanity_val_steps": 200, "max_steps": 9}}
    now = {"trainer": {"_target_": "lightning.pytorch.Trainer", "num_sanity_val_steps": 0, "max_steps": 9}}
    assert run_settings(before) == run_settings(now) == {}
