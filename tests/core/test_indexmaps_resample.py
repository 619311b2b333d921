"""The index-map rule of upsampling (nearest, nearest-exact, linear, bilinear, bicubic,
trilinear, antialiased; align_corners True / False; integer, non-integer and shrinking scales,
sizes) and of adaptive average pooling (G27-1, G27-2, G27-4). The proved pattern must hold
every nonzero of torch.func.jacrev at several random x in float64 and float32 (a superset is
sound, a missed entry never), be exact where the coordinates are exact (scale 2, no
align_corners), and read at most the kernel's entries a row where the scale grows."""
import pytest
import torch
import torch.nn.functional as F

from vjp_magic.core.indexmaps import proved_pattern

SHAPES = {1: (2, 2, 9), 2: (1, 2, 6, 7), 3: (1, 1, 4, 5, 6)}
MODES = [("nearest", 1), ("nearest", 2), ("nearest", 3), ("nearest-exact", 1),
         ("nearest-exact", 2), ("nearest-exact", 3), ("linear", 1), ("bilinear", 2),
         ("bicubic", 2), ("trilinear", 3)]
SIZES = ["scale 2", "scale 1.7", "scale 0.6", "size 7", "size 4"]


def _options(mode: str, d: int, size: str, corners) -> dict:
    kind, value = size.split()
    options = {"scale_factor": float(value)} if kind == "scale" else {"size": (int(value),) * d}
    if corners is not None:
        options["align_corners"] = corners
    return {"mode": mode, **options}


def _proved_and_actual(f, shape, dtype, seeds=(0, 1, 2)):
    x = torch.randn(shape, dtype=dtype, requires_grad=True)
    y = f(x)
    found = proved_pattern(y, x, 2**30, dense=True)
    assert found is not None, "the rules should prove this graph"
    proved = torch.zeros(y.numel(), x.numel(), dtype=torch.bool)
    rows = torch.repeat_interleave(torch.arange(y.numel()), found.crow.diff())
    proved[rows, found.col] = True
    actual = torch.zeros_like(proved)
    for seed in seeds:
        x0 = torch.randn(shape, dtype=dtype, generator=torch.Generator().manual_seed(seed))
        actual |= torch.func.jacrev(f)(x0).reshape(y.numel(), x.numel()) != 0
    return proved, actual


CASES = [(mode, d, size, corners) for mode, d in MODES for size in SIZES
         for corners in ([None] if "nearest" in mode else [False, True])]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("mode, d, size, corners", CASES)
def test_upsampling_is_proved_and_holds_every_nonzero(mode, d, size, corners, dtype):
    options = _options(mode, d, size, corners)
    proved, actual = _proved_and_actual(lambda t: F.interpolate(t * t, **options),
                                        SHAPES[d], dtype)
    assert not (actual & ~proved).any(), "the proved pattern misses a nonzero"
    if size == "scale 2" and not corners:
        assert torch.equal(proved, actual)  # exact coordinates: no margin, no extra entry
    if size.startswith("scale") and float(size.split()[1]) > 1:
        kernel = {"linear": 2, "bilinear": 2, "trilinear": 2, "bicubic": 4}.get(mode, 1)
        assert int(proved.sum(1).max()) <= (kernel + (size != "scale 2")) ** d  # margin: +1


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
@pytest.mark.parametrize("size", ["scale 0.4", "scale 1.5", "size 3 11"])
@pytest.mark.parametrize("corners", [False, True])
def test_antialiased_resampling_holds_every_nonzero(mode, size, corners):
    kind, *values = size.split()
    options = {"scale_factor": float(values[0])} if kind == "scale" else {
        "size": tuple(int(v) for v in values)}
    proved, actual = _proved_and_actual(lambda t: F.interpolate(
        t * t, mode=mode, antialias=True, align_corners=corners, **options),
        (1, 2, 9, 10), torch.float64)
    assert not (actual & ~proved).any()


@pytest.mark.parametrize("d, shape, out", [(1, (1, 2, 17), 5), (1, (1, 2, 10), 7),
                                           (2, (1, 2, 9, 11), (4, 3)),
                                           (3, (1, 1, 5, 6, 7), (2, 4, 3))])
def test_adaptive_average_pooling_is_its_windows_exactly(d, shape, out):
    pool = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}[d]
    proved, actual = _proved_and_actual(lambda t: pool(t * t, out), shape, torch.float64)
    assert torch.equal(proved, actual)


def test_upsampling_in_a_graph_gives_the_jacobian_by_colours():
    """differentiate of a 2-D bilinear upsampling of x·roll(x) (proved: no probe pass) equals
    torch.func.jacrev, in fewer passes than one per output entry."""
    import vjp_magic

    def f(t):
        u = (t * t.roll(1)).reshape(1, 1, 24, 30)
        return F.interpolate(u, scale_factor=(2, 1.5), mode="bicubic").reshape(-1)

    x = torch.randn(720, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    r = vjp_magic.differentiate(f(x.requires_grad_()), x, names=["x"], seed=0)
    sparse = r.inputs["x"].sparse
    assert sparse is not None and str(sparse.evidence) == "proved"
    assert sparse.count < f(x).numel() / 4
    torch.testing.assert_close(r.jacobian("x", layout=torch.sparse_csr).to_dense(),
                               torch.func.jacrev(f)(x.detach()), rtol=1e-12, atol=1e-12)


UNPOOLS = {
    "max_unpool2d": (lambda t: F.max_unpool2d(*F.max_pool2d(t * t, 2, return_indices=True), 2),
                     (1, 2, 6, 8)),
    "max_unpool1d, stride 2 of 3, output size": (lambda t: F.max_unpool1d(*F.max_pool1d(
        t * t, 3, stride=2, return_indices=True), 3, stride=2, output_size=[9]), (1, 2, 9)),
    "max_unpool3d": (lambda t: F.max_unpool3d(*F.max_pool3d(t * t, 2, return_indices=True), 2),
                     (1, 1, 4, 4, 6)),
    "max_unpool2d of overlapping windows (shared indices)": (lambda t: F.max_unpool2d(
        *F.max_pool2d(t * t, 3, stride=1, return_indices=True), 3, stride=1), (1, 1, 6, 6)),
}


@pytest.mark.parametrize("name", list(UNPOOLS))
def test_max_unpool_reads_its_saved_indices_conditionally(name):
    """Conditional on the saved indices (as gather is): exact at this x, and said so."""
    f, shape = UNPOOLS[name]
    x = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    y = f(x.requires_grad_())
    found = proved_pattern(y, x, 2**30, dense=True)
    assert found is not None and any(op.startswith("max_unpool") for op in found.conditional_on)
    proved = torch.zeros(y.numel(), x.numel(), dtype=torch.bool)
    proved[torch.repeat_interleave(torch.arange(y.numel()), found.crow.diff()), found.col] = True
    actual = torch.autograd.functional.jacobian(f, x.detach()).reshape(y.numel(), -1) != 0
    assert torch.equal(proved, actual)
