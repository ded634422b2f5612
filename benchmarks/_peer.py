"""The PyTorch peer of the train benchmarks: timm's counterpart of a paper model, timed in the same
process and the same alternating loop as ours (:func:`_timing.time_models`).

:class:`Peer` wraps a ``timm.create_model(arch, pretrained=False, num_classes=n)`` network with the
two calls the loop makes, ``train_on_batch`` (forward, loss, backward, optimiser step; ends with
``loss.item()``) and ``predict_on_batch`` (``eval()`` + ``inference_mode``; ends with ``.numpy()``),
and with what :func:`_timing.model_row` reads (``count_params``, ``trainable_weights``,
``jit_compile``). The loop's batches (NHWC tensors) are converted once per distinct batch to NCHW
torch tensors, ``channels_last`` in memory unless ``--peer-format contiguous`` (the model too), so
the timed steps hold no conversion. ``torch.set_num_threads(cores)``: the cores of this process's
CPU affinity, as TensorFlow uses. Same batch, size, optimiser (Keras' epsilon 1e-7) and loss as
ours. ``--peer-device`` (default ``auto``: CUDA where torch sees a GPU) and ``--precision`` (the
dtype policy of ours: the peer runs under ``torch.autocast`` to the same half type, float16 with a
``GradScaler`` as Keras' loss scaling) serve the GPU figures of ``gpu.sh``. Needs the ``bench``
extra (``pip install '.[bench]'``; a CPU build of torch is enough); without it
:func:`available` is False and the scripts print :data:`SKIPPED`.
"""

from __future__ import annotations

import time

SKIPPED = "peer skipped: pip install '.[bench]'"
FORMATS = ("channels_last", "contiguous")


def available() -> bool:
    """Whether torch and timm import."""
    try:
        import timm  # noqa: F401
        import torch  # noqa: F401
    except Exception:  # ImportError, or a broken install (e.g. a torchvision built for another torch)
        return False
    return True


def add_args(ap) -> None:
    """``--peer`` / ``--no-peer`` and ``--peer-format`` of the train benchmarks."""
    ap.add_argument("--no-peer", dest="peer", action="store_false",
                    help="do not time the PyTorch + timm peer")
    ap.add_argument("--peer-format", choices=FORMATS, default="channels_last",
                    help="memory format of the peer's model and batches (default channels_last)")
    ap.add_argument("--peer-device", choices=("auto", "cpu", "cuda"), default="auto",
                    help="the peer's device (default auto: cuda where torch sees a GPU)")


def _biased_focal(logits, y, alpha=0.4, beta=2.0, shift=0.2):
    """cxr_keras.losses.BiasedFocalLoss (defaults, from logits, no NaN targets), in torch."""
    import torch.nn.functional as F

    p = logits.sigmoid()
    pos = -alpha * (1 - p) ** beta * y * F.logsigmoid(logits)
    neg = -(1 - alpha) * (p - shift).clamp(min=0) ** beta * (1 - y) * F.logsigmoid(-logits)
    return (pos + neg).mean()  # ours: the mean over the valid entries (all valid here)


LOSSES = {"bce": "BCE with logits", "bfl": "biased focal (alpha 0.4, beta 2, shift 0.2)",
          "cce": "cross-entropy (one-hot targets)"}


class Peer:
    """A timm model with the Keras-like calls of :func:`_timing.time_models`.

    ``optimizer``: ``("adamw", lr, weight_decay[, (beta1, beta2)])``, ``("adam", lr)`` or
    ``("sgd", lr, momentum)``; ``loss``: a key of :data:`LOSSES`; ``timm_kwargs`` go to
    ``timm.create_model``.
    """

    jit_compile = False

    def __init__(self, arch, num_classes, size, loss, optimizer, cores, fmt="channels_last",
                 device="cpu", precision="float32", **timm_kwargs):
        import timm
        import torch

        torch.set_num_threads(cores)
        torch.manual_seed(0)
        self.torch = torch
        self.arch, self.loss_name, self.size = arch, loss, size
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device, self.precision = device, precision
        if device == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its kernels
        self.amp = {"mixed_bfloat16": torch.bfloat16, "mixed_float16": torch.float16}.get(precision)
        self.scaler = (torch.amp.GradScaler(device) if self.amp is torch.float16 else None)
        self.format = torch.channels_last if fmt == "channels_last" else torch.contiguous_format
        self.net = timm.create_model(arch, pretrained=False, num_classes=num_classes,
                                     **timm_kwargs).to(device, memory_format=self.format)
        self.name = f"timm_{arch}"
        params = list(self.net.parameters())
        kind, lr, *rest = optimizer
        if kind == "adamw":
            betas = rest[1] if len(rest) > 1 else (0.9, 0.999)
            self.opt = torch.optim.AdamW(params, lr, betas=betas, eps=1e-7, weight_decay=rest[0])
        elif kind == "adam":
            self.opt = torch.optim.Adam(params, lr, eps=1e-7)
        else:
            self.opt = torch.optim.SGD(params, lr, momentum=rest[0])
        self.optimizer = optimizer
        self._cache = {}

    # what _timing.model_row reads
    @property
    def trainable_weights(self):
        return [p for p in self.net.parameters() if p.requires_grad]

    def count_params(self) -> int:
        return sum(p.numel() for p in self.net.parameters()) + sum(
            b.numel() for b in self.net.buffers() if b.is_floating_point())

    def _tensor(self, x, image: bool):
        """The torch tensor of one of the loop's batches (NHWC -> NCHW), converted once."""
        key = id(x)
        if key not in self._cache:
            import numpy as np

            t = self.torch.from_numpy(np.array(x, dtype=np.float32)).to(self.device)
            if image:
                t = t.permute(0, 3, 1, 2).contiguous(memory_format=self.format)
            self._cache[key] = (x, t)  # keeps x alive so that its id is not reused
        return self._cache[key][1]

    def _loss(self, logits, y):
        F = self.torch.nn.functional
        if self.loss_name == "bce":
            return F.binary_cross_entropy_with_logits(logits, y)
        if self.loss_name == "cce":
            return F.cross_entropy(logits, y)
        return _biased_focal(logits, y)

    def _autocast(self):
        return self.torch.autocast(self.device, dtype=self.amp, enabled=self.amp is not None)

    def train_on_batch(self, x, y):
        self.net.train()
        self.opt.zero_grad(set_to_none=True)
        with self._autocast():
            logits = self.net(self._tensor(x, True))
        loss = self._loss(logits.float(), self._tensor(y, False))  # the loss in float32, as ours
        if self.scaler is None:
            loss.backward()
            self.opt.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.opt)
            self.scaler.update()
        return loss.item()

    def predict_on_batch(self, x):
        self.net.eval()
        with self.torch.inference_mode(), self._autocast():
            return self.net(self._tensor(x, True)).float().cpu().numpy()

    def gmacs(self) -> float:
        """MACs per image of the convolutions and linear layers (weight products, as
        ``count_flops`` counts ours; attention products not included), from one forward pass."""
        torch = self.torch
        nn = torch.nn
        total = [0]

        def hook(mod, inp, out):
            per = out.numel() // out.shape[0]
            if isinstance(mod, nn.Conv2d):
                k = mod.kernel_size[0] * mod.kernel_size[1]
                total[0] += per * mod.in_channels // mod.groups * k
            else:
                total[0] += per * mod.in_features

        hooks = [m.register_forward_hook(hook) for m in self.net.modules()
                 if isinstance(m, (nn.Conv2d, nn.Linear))]
        self.net.eval()
        with torch.inference_mode():
            h, w = self.size if isinstance(self.size, (tuple, list)) else (self.size, self.size)
            self.net(torch.zeros(1, 3, h, w, device=self.device)
                     .contiguous(memory_format=self.format))
        for h in hooks:
            h.remove()
        return total[0] / 1e9


def add(models: dict, peers: dict, targets, size: int, num_classes: int, loss: str,
        optimizer: tuple, args, cores: int, **timm_kwargs) -> None:
    """Add to ``models`` (the dict :func:`_timing.time_models` times) one :class:`Peer` per
    ``{arch: [our model names it is the peer of]}`` in ``peers``, or print :data:`SKIPPED`."""
    if not args.peer:
        print("peer not timed (--no-peer)")
        return
    if not available():
        print(SKIPPED)
        return
    for arch, ours in peers.items():
        t = time.perf_counter()
        net = Peer(arch, num_classes, size, loss, optimizer, cores, args.peer_format,
                   getattr(args, "peer_device", "cpu"), getattr(args, "precision", "float32"),
                   **timm_kwargs)
        models[f"peer_{arch}"] = {"model": net, "targets": targets, "peer_of": list(ours),
                                  "build_s": time.perf_counter() - t}


def split(models: dict) -> tuple:
    """``(ours, peers)``: the entries of ``models`` without and with ``peer_of``."""
    ours = {k: m for k, m in models.items() if "peer_of" not in m}
    return ours, {k: m for k, m in models.items() if "peer_of" in m}


def rows(peers: dict, batch: int, cores: int) -> list:
    """Result rows of the timed peers (:func:`_timing.model_row` + what the peer is)."""
    import timm
    import torch

    import _timing

    out = []
    for name, m in peers.items():
        net = m["model"]
        g = net.gmacs()
        row = {"model": name, "arch": net.arch, "peer_of": m["peer_of"],
               "loss": LOSSES[net.loss_name], "optimizer": repr(net.optimizer),
               "framework": f"torch {torch.__version__}, timm {timm.__version__}",
               "memory_format": "channels_last" if net.format is torch.channels_last
               else "contiguous", "torch_threads": torch.get_num_threads(),
               "device": net.device, "precision": net.precision,
               **_timing.model_row(m, batch, cores)}
        out.append(_timing.flop_fields(row, g, 6 * g))
    return out


def report(results: dict) -> None:
    """Print the ours / peer table of a benchmark's ``results`` (its ``models`` and ``peers``)."""
    peers = results.get("peers")
    if not peers:
        return
    by = {r["model"]: r for r in results["models"]}
    print("\n| ours | PyTorch peer (timm) | train img/s ours / peer | ours / peer "
          "| predict img/s ours / peer | ours / peer |")
    print("|---|---|---|---|---|---|")
    for p in peers:
        for name in p["peer_of"]:
            r = by.get(name)
            if r:
                print(f"| {name} | {p['arch']} | {r['train_images_per_s']:.2f} / "
                      f"{p['train_images_per_s']:.2f} "
                      f"| {r['train_images_per_s'] / p['train_images_per_s']:.2f}x "
                      f"| {r['predict_images_per_s']:.2f} / {p['predict_images_per_s']:.2f} "
                      f"| {r['predict_images_per_s'] / p['predict_images_per_s']:.2f}x |")
    p = peers[0]
    print(f"\nPeer: {p['framework']}, {p['memory_format']}, {p['torch_threads']} torch threads, "
          f"{p.get('device', 'cpu')}, {p.get('precision', 'float32')}, "
          f"same batches, loss and optimiser, timed alternating with ours.")
