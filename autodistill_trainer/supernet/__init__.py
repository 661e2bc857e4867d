"""Weight-sharing supernet for MobileBERT students (issue 13).

* :mod:`.space`: :class:`~.space.ElasticSpace`, the elastic search space (largest/smallest/sampled architectures,
  validation, the supernet's and a sub-network's configs);
* :mod:`.extract`: the nesting rule, :func:`~.extract.extract_subnet` (a standalone Transformers model) and
  :func:`~.extract.subnet_forward` (a sub-network run on views of the supernet's weights);
* :mod:`.sandwich`: :class:`~.sandwich.SandwichSampler` and :class:`~.sandwich.SandwichModel` (several
  sub-networks of one batch in one forward);
* :mod:`.training`: :func:`~.training.train_supernet` (a ``transformers.Trainer`` run of the sandwich model);
* :mod:`.flash`: :func:`~.flash.train_supernet_flash` (block-by-block distillation of the supernet on sandwiches).

This package imports nothing at load time: import the submodules.
"""
