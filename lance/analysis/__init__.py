"""What LANCE is compared against and measured with: the per-step baselines HOSVD and ASI
(``baselines``), activation-memory and FLOP accounting (``accounting``), gradient fidelity
(``fidelity``) and the convergence diagnostics (``convergence``). Built on :mod:`lance.core` only.
"""
