"""The defaults that two stages must agree on, defined once.

`cxr preprocess` builds a cache of `CACHE_SIZE` unless told otherwise, and `cxr train` trains at
`IMAGE_SIZE` unless told otherwise, reading any cache at least that large; so the default cache
always serves the default model input, and changing either here keeps them meeting.
"""

CACHE_SIZE = 256  # side of the squares `cxr preprocess` caches by default
IMAGE_SIZE = 224  # the model input `cxr train` uses by default (TrainConfig.image_size)
