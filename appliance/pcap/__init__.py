"""Capture files read offline: ``schoolgate inspect PCAP``.

    reader.py    pcap and pcapng files, memory-mapped, with their framing checked
    _kernels.py  numba walks over the mapped file (frame offsets, lengths, timestamps)
    inspect.py   every name a capture's flows asked for, with the verdict
"""
