"""lipstream: a real-time lip-sync avatar server built on StyleSync."""

import os

# numpy's OpenBLAS keeps a worker thread per core spinning after every matrix product. The server
# makes small products 25 times a second per session (the mel filterbank), so on two cores that
# thread burned about one core doing nothing (measured: 1.32 server cores for one session, 0.34
# with one BLAS thread). Set before numpy is first imported; an explicit setting wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

# PyTorch's OpenMP threads spin-wait for each other between operations. When another process holds
# one of two cores, a thread waits for a partner that is not running, and torch work (training,
# personalisation, prepare) became 10 to 15 times slower (measured: a test's training steps took 86 s
# instead of 5 s beside one busy process; 4.8 s with passive waiting). Set before torch is first
# imported; an explicit setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
