import torch
import not_a_real_package_edgesr  # noqa: F401  (a third-party package the user has not installed)


class Net(torch.nn.Module):
    pass
