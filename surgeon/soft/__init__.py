"""Sorted Fine-Tuning (SoFT): the losses that train every chosen prefix of layers to be a usable model.

- :mod:`.losses`: the chunked sorted loss (``sum`` or ``stochastic``), a ``loss_fn`` for the trainer.
- :mod:`.width`: SoFT along width (nested FFN widths sampled per micro-batch).

The recipe is ``surgeon soft`` (:mod:`surgeon.commands.soft`); exits are parsed by :mod:`surgeon.exits`
and captured from one forward pass by :mod:`surgeon.eval.capture`. Importing this package does not
import torch.
"""
