"""A bank dropped by its caller is freed at once, not at the next garbage collection: no reference cycle
keeps its model and its memory-mapped files (deleted ones too, whose disk space stays taken) alive. A cycle
through the router index's lazy out-of-scope reader did, and made the disk-full tests' free space drift."""

import gc
import weakref

from adapterbank import AdapterBank

from conftest import copy_bank


def _freed_without_collector(bank_dir, use) -> bool:
    first = AdapterBank.open(bank_dir, device="cpu")  # lazy imports of the first open may pin their frames
    use(first)
    del first
    gc.collect()
    gc.disable()
    try:
        bank = AdapterBank.open(bank_dir, device="cpu")
        use(bank)
        ref = weakref.ref(bank)
        del bank
        return ref() is None
    finally:
        gc.enable()


def test_a_dropped_classification_bank_is_freed_at_once(classifier_template, tmp_path):
    bank_dir = copy_bank(classifier_template, tmp_path / "bank")
    # out of scope on: the routed task's covariance factor is read through the index's lazy reader
    assert _freed_without_collector(bank_dir, lambda bank: bank.predict(["aaaaaa bc de", "zzz"], ood_quantile=0.05))


def test_a_dropped_causal_bank_is_freed_at_once(causal_template, tmp_path):
    bank_dir = copy_bank(causal_template, tmp_path / "bank")
    assert _freed_without_collector(bank_dir, lambda bank: bank.generate(["abc fed"], max_new_tokens=2))
