"""``%hessian`` and ``vjp_magic.hessian`` through the one pipeline."""
from __future__ import annotations

import torch
from hessians import close, leaf, one_sentence


# -- %hessian and vjp_magic.hessian ----------------------------------------------------------------
class TestHessianThroughThePipeline:
    def test_hessian_function(self):
        import vjp_magic

        x = leaf([0.5, -1.0, 2.0], torch.float64)
        h = vjp_magic.hessian((x**3).sum(), x)
        close(h.derivatives["x"], torch.diag(6 * x.detach()), torch.float64)
        close(h.hessian("x"), torch.autograd.functional.hessian(
            lambda t: (t**3).sum(), x.detach()), torch.float64)
        assert "text/markdown" in h._repr_mimebundle_()

    def test_hessian_function_names(self):
        import vjp_magic

        x = leaf([0.5, 1.0], torch.float64)
        h = vjp_magic.hessian(torch.sin(x), [x], names=["t"])
        close(h.derivatives["t"], -torch.sin(x.detach()), torch.float64)

    def test_magic_names(self, ip, run_ok):
        run_ok("x = torch.linspace(0.5, 2, 4, requires_grad=True)\ny = torch.log(x)")
        h = run_ok("%hessian y x")
        close(h.derivatives["x"], -1 / torch.linspace(0.5, 2, 4) ** 2, torch.float32)

    def test_magic_expression_wrt(self, ip, run_ok):
        run_ok("x = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)")
        h = run_ok("%hessian (x**2).sum() * x[0] wrt x")
        expected = torch.autograd.functional.hessian(
            lambda t: (t**2).sum() * t[0], torch.tensor([1.0, 2.0], dtype=torch.float64))
        close(h.derivatives["x"], expected, torch.float64)
        close(h.hessian("x"), expected, torch.float64)

    def test_magic_options(self, ip, run_ok):
        run_ok("x = torch.tensor([0.123456, 1.0], dtype=torch.float64, requires_grad=True)")
        h = run_ok("%hessian -p 2 --threshold 5 torch.exp(x) wrt x")
        assert "1.1" in repr(h) and "1.131" not in repr(h)  # exp(0.123456) = 1.1314

    def test_magic_symbolic(self, ip, run_ok):
        run_ok("x = torch.linspace(0.5, 2, 3, requires_grad=True)")
        h = run_ok("%hessian --symbolic torch.sin(x) wrt x")
        assert h.crosscheck.get("x") is True

    def test_magic_once_differentiable(self, ip, run_ok, usage_error):
        run_ok("from torch.autograd.function import once_differentiable\n"
               "class Sq(torch.autograd.Function):\n"
               "    @staticmethod\n"
               "    def forward(ctx, x):\n"
               "        ctx.save_for_backward(x)\n"
               "        return x**2\n"
               "    @staticmethod\n"
               "    @once_differentiable\n"
               "    def backward(ctx, g):\n"
               "        return 2 * ctx.saved_tensors[0] * g\n"
               "x = torch.tensor([1.0, 2.0], requires_grad=True)\ny = Sq.apply(x).sum()")
        message = usage_error("%hessian y x")
        assert "cannot be differentiated twice" in message and one_sentence(message)

    def test_magic_keeps_grad(self, ip, run_ok):
        run_ok("x = torch.tensor([1.0, 2.0], requires_grad=True)\nx.grad = torch.ones(2)")
        run_ok("%hessian (x**3).sum() wrt x")
        assert torch.equal(ip.user_ns["x"].grad, torch.ones(2))
