"""The paper's experiments as runs that write result files: fine-tuning (``finetune``), pretraining
on a split's first classes (``pretrain``), continual learning (``continual``), step latency
(``latency``) and the step benchmark (``benchmark``), with what they share: the frozen-trunk
feature cache (``cache``), result files (``results``), provenance (``provenance``), claims on
running work (``locks``) and the list of planned runs (``plan``).
"""
