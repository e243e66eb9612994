"""flashlstm.torch.nn: the layers' gradients against finite differences (float64, CPU), torch.compile,
causality of the sequence layers, the graph layer's batching (a joined batch equals each graph
alone) and cache, the initial gates, argument errors, and — where a GPU is visible — the CUDA
kernels through the layers against the CPU reference. Skipped where torch is not installed."""

import copy

import pytest

fl = pytest.importorskip("flashlstm")
torch = pytest.importorskip("torch")
import flashlstm.torch.nn as fnn  # noqa: E402
from torch.func import functional_call  # noqa: E402

GPU = fl.built_with_cuda and torch.cuda.is_available() and fl.cuda_available()
needs_gpu = pytest.mark.skipif(not GPU, reason="needs a CUDA build and a GPU")


def randomise(layer, scale=0.3, seed=0):
    """Every parameter (the zero-initialised gate weights too) set to random values, so that every
    path carries gradient."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)
    return layer


def gradcheck_layer(layer, *inputs, param):
    """torch.autograd.gradcheck of the layer in its first input and in one parameter."""
    weight = dict(layer.named_parameters())[param].detach().clone().requires_grad_()
    x = inputs[0].detach().clone().requires_grad_()

    def f(x, w):
        return functional_call(layer, {param: w}, (x, *inputs[1:]))

    assert torch.autograd.gradcheck(f, (x, weight), eps=1e-6, atol=1e-6)


def layers():
    g = torch.Generator().manual_seed(1)
    seq = torch.randn(2, 7, 8, generator=g, dtype=torch.float64)
    seq32 = torch.randn(2, 5, 32, generator=g, dtype=torch.float64)
    grid = torch.randn(2, 3, 4, 8, generator=g, dtype=torch.float64)
    nodes = torch.randn(6, 8, generator=g, dtype=torch.float64)
    edges = torch.tensor([[0, 1], [1, 2], [2, 0], [2, 3], [4, 5]])
    return [
        ("mLSTMLayer", fnn.mLSTMLayer(8, heads=2, proj_factor=1.0, chunk_size=4), (seq,), "igate.weight"),
        ("sLSTMLayer", fnn.sLSTMLayer(32, heads=2), (seq32,), "R"),  # head dim 16, as the CUDA kernels take
        ("pLSTM2D P", fnn.pLSTM2D(8, heads=2, mode="P", pos_embed=(3, 4)), (grid,), "gates.weight"),
        ("pLSTM2D D", fnn.pLSTM2D(8, heads=2, mode="D"), (grid,), "gates.weight"),
        ("pLSTMGraph P", fnn.pLSTMGraph(8, heads=2, mode="P"), (nodes, edges), "transition.weight"),
        ("pLSTMGraph D", fnn.pLSTMGraph(8, heads=2, mode="D", reverse=True), (nodes, edges), "source.weight"),
    ]


@pytest.mark.parametrize("index", range(6), ids=[name for name, *_ in layers()])
def test_layer_gradients_and_compile(index):
    _, layer, inputs, param = layers()[index]
    layer = randomise(layer.double(), seed=index)
    y = layer(*inputs)
    assert y.shape == inputs[0].shape and torch.isfinite(y).all()
    gradcheck_layer(layer, *inputs, param=param)
    compiled = torch.compile(layer, fullgraph=False, backend="aot_eager")
    torch.testing.assert_close(compiled(*inputs), y)


@pytest.mark.parametrize("make", [lambda: fnn.mLSTMLayer(8, heads=2, chunk_size=4), lambda: fnn.sLSTMLayer(8, heads=2)])
def test_sequence_layers_are_causal(make):
    layer = randomise(make().double())
    x = torch.randn(1, 12, 8, dtype=torch.float64)
    changed = x.clone()
    changed[:, 6:] += 1.0
    y, y_changed = layer(x), layer(changed)
    torch.testing.assert_close(y[:, :6], y_changed[:, :6], rtol=0, atol=1e-12)
    assert (y[:, 6:] - y_changed[:, 6:]).abs().max() > 1e-6


def test_graph_layer_batches_and_caches():
    """Two graphs joined into one (the second's node ids offset) give each graph's own output; the
    DAG is built once per edge array."""
    layer = randomise(fnn.pLSTMGraph(8, heads=2, mode="P").double())
    a, b = torch.tensor([[0, 1], [1, 2], [0, 2]]), torch.tensor([[1, 0], [2, 1], [3, 2]])
    xa, xb = torch.randn(3, 8, dtype=torch.float64), torch.randn(4, 8, dtype=torch.float64)
    joined = layer(torch.cat([xa, xb]), torch.cat([a, b + 3]))
    torch.testing.assert_close(joined, torch.cat([layer(xa, a), layer(xb, b)]))
    layer(torch.cat([xa, xb]), torch.cat([a, b + 3]))
    assert len(layer._graphs) == 3
    layer.max_cached_graphs = 2
    layer(xa, a + 0 * a)  # already cached: nothing dropped
    layer(xa[:2], a[:1])  # a new graph: the oldest is dropped
    assert len(layer._graphs) == 2
    # Reversed edges make another DAG, so another result.
    backwards = copy.deepcopy(layer)
    backwards.reverse, backwards._graphs = True, {}
    assert (backwards(xa, a) - layer(xa, a)).abs().max() > 1e-8


def test_initial_gates_are_their_biases():
    """Zero gate weights: every patch's gates are the biases' (sources and marks σ(-4), direction
    biases -2 … 2 across heads), whatever the input."""
    layer = fnn.pLSTM2D(8, heads=4, mode="P")
    x = torch.randn(1, 2, 3, 8)
    raw = layer.gates(x).unflatten(-1, (len(layer.names), 4, layer.heads))
    sr = raw[..., layer.names.index("Sr"), :, :]
    torch.testing.assert_close(torch.sigmoid(sr), torch.full_like(sr, torch.sigmoid(torch.tensor(-4.0)).item()))
    alpha = raw[0, 0, 0, layer.names.index("alpha"), 0]
    torch.testing.assert_close(alpha, torch.linspace(-2.0, 2.0, 4))


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="mode: 'P' or 'D'"):
        fnn.pLSTM2D(8, heads=2, mode="X")
    with pytest.raises(ValueError, match="heads: 3 does not divide dim 8"):
        fnn.pLSTMGraph(8, heads=3)
    with pytest.raises(ValueError, match="heads: 3 does not divide dim 8"):
        fnn.sLSTMLayer(8, heads=3)


@needs_gpu
@pytest.mark.parametrize("index", range(6), ids=[name for name, *_ in layers()])
def test_layers_on_gpu_match_the_cpu(index):
    _, layer, inputs, _ = layers()[index]
    cpu = randomise(layer.double(), seed=index)
    if isinstance(cpu, fnn.mLSTMLayer):
        cpu.chunk_size = 64  # the CUDA kernels' chunks
    gpu = copy.deepcopy(cpu).float().cuda()
    x_cpu = [t.detach().clone().requires_grad_() if t.is_floating_point() else t for t in inputs]
    x_gpu = [t.detach().float().cuda().requires_grad_() if t.is_floating_point() else t.cuda() for t in inputs]
    y_cpu, y_gpu = cpu(*x_cpu), gpu(*x_gpu)
    scale = y_cpu.abs().max().item()
    assert (y_gpu.double().cpu() - y_cpu).abs().max().item() < 1e-4 * scale
    y_cpu.sum().backward()
    y_gpu.sum().backward()
    g_cpu, g_gpu = x_cpu[0].grad, x_gpu[0].grad.double().cpu()
    assert (g_gpu - g_cpu).abs().max().item() < 1e-3 * g_cpu.abs().max().item()
