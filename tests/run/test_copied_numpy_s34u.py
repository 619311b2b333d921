"""torch.tensor(NumPy of x.detach()) gets advice that runs when followed (s34 U9)."""
from __future__ import annotations

X = "import numpy as np\nx = torch.tensor([1., 2.], requires_grad=True)\n"


def test_the_copy_of_numpy_is_advised_in_torch(ip, usage_error):
    message = usage_error(f"%%vjp\n{X}y = torch.tensor(np.exp(x.detach().cpu().numpy()))")
    assert message.rstrip(".").endswith("Keep the computation: y = torch.exp(x)"), message
    assert ip.run_cell(f"%%vjp\n{X}y = torch.exp(x)").success


def test_numpy_without_a_torch_twin_is_said_in_words(usage_error):
    message = usage_error(f"%%vjp\n{X}y = torch.tensor(np.polyval([1., 2.], x.detach().numpy()))")
    assert ".numpy()" not in message.split("outside autograd")[-1], message
    assert "torch functions" in message, message
