"""The paper's algorithms, on torch alone: the truncated HOSVD (``hosvd``), which layers train
(``selection``), Phase I's one-shot calibration (``calibration``), Phase II's compressed layers
(``layers``) and Phase III's memory of important input directions (``memory``).

Nothing here reads a dataset, draws a figure or writes a result; the only files it touches are
the calibrations that :meth:`Calibration.save` and :meth:`Calibration.load` exchange.
"""
