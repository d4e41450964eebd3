"""End-to-end ERQ timing on the GPU; see :mod:`erq.bench` (same as ``erq bench``)."""
from erq.bench import main

if __name__ == "__main__":
    main()
