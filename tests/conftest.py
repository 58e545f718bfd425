import torch as th


def pytest_configure(config) -> None:
    # The tests use small networks, for which one thread is fastest; it also keeps parallel workers from oversubscribing
    th.set_num_threads(1)
