"""Evaluation: bits per byte (:mod:`.bpb`, used by validation), the bridge to
lm-evaluation-harness (:mod:`.harness`), the offline ``demo`` suite's items (:mod:`.demo_suite`,
its harness task files in ``tasks/``) and what ``task=eval`` loads (:mod:`.load`); evaluation
during training is a training callback (:mod:`allam.train.eval_callback`). Nothing here imports
``lm_eval`` until a suite runs."""
