"""Datasets in the CoOp on-disk layout, few-shot sampling, base/novel splits, the toy world."""
