"""Raw logs -> the UserU data set: contract, synthetic worlds, build, supervision text, encoding, manifest."""
