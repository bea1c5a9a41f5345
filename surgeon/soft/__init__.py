"""Sorted Fine-Tuning (SoFT): train every chosen prefix of layers to be a usable model.

- :mod:`.exits`: parse / default exits (``--exits``).
- :mod:`.heads`: find the shared norm / head, capture every exit's residual stream in one pass.
- :mod:`.losses`: the chunked sorted loss (``sum`` or ``stochastic``), a ``loss_fn`` for the trainer.
- :mod:`.evaluate`: per-exit loss / perplexity / KL to the full model (``surgeon eval``).
- :mod:`.train`: the ``surgeon soft`` recipe.

Importing this package does not import torch.
"""
