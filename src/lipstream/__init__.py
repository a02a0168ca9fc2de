"""lipstream: a real-time lip-sync avatar server built on StyleSync."""

import os

# numpy's OpenBLAS keeps a worker thread per core spinning after every matrix product. The server
# makes small products 25 times a second per session (the mel filterbank), so on two cores that
# thread burned about one core doing nothing (measured: 1.32 server cores for one session, 0.34
# with one BLAS thread). Set before numpy is first imported; an explicit setting wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

__version__ = "0.1.0"
