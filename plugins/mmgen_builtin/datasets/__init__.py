"""Dataset plugins: the offline default, PolyMNIST readers, the generator and the downloader."""
