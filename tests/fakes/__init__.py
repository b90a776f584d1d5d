"""Local fakes of the market data APIs (loopback HTTP servers) used by the source tests."""
