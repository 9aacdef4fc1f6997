"""Trainers: what turns a config preset and its data into a trained run in a workdir.

detection.py trains any detector with any method (adapt.methods) on the generic step: experiments/
train_detector.py, adapt_detector.py and the Day2Night protocol call its `train`. unit.py trains UNIT
(unpaired night <-> day translation): train_unit and the protocol call its `from_config`; beside it
unit_step.py (the step), unit_data.py (two-domain image batches), unit_grids.py (image grids) and
unit_judge.py (the frozen detector and backbone its detection-aware terms read, and when they are needed).
"""
