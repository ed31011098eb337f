"""Helpers for the transformers + PyTorch parity oracle (imported only by tests that
already skipped without torch)."""
from __future__ import annotations


def save_perturbed(model, directory, perturb):
    """Nudge the parameters whose name satisfies ``perturb`` (norm scales, biases: their
    init values 1 and 0 would hide a dropped or misplaced one), then save_pretrained."""
    import torch

    with torch.no_grad():
        for name, param in model.named_parameters():
            if perturb(name):
                param.add_(0.1 * torch.randn_like(param))
    model.save_pretrained(directory, safe_serialization=True)
    return model
