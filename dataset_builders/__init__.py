"""Dataset builders: raw MovieLens / LastFM / Goodreads data -> multi-negative preference datasets.

```python
from dataset_builders import build_dataset

dataset = build_dataset("movielens-100k", "data/ml100k", raw_dir="path/to/ml-100k")
```

Command line: `python dataset_builders/build.py --help`.
"""

from .config import BuildConfig
from .errors import AmbiguousRawFilesError, MissingRawFilesError, OutputFolderError, RawDataError, RawDownloadError
from .folder import load_dataset_folder, push_dataset_folder
from .pipeline import BuildResult, build_dataset, run_build
from .prepare import load_preference_data
from .sources import SOURCES, get_source


__all__ = [
    "SOURCES",
    "AmbiguousRawFilesError",
    "BuildConfig",
    "BuildResult",
    "MissingRawFilesError",
    "OutputFolderError",
    "RawDataError",
    "RawDownloadError",
    "build_dataset",
    "get_source",
    "load_dataset_folder",
    "load_preference_data",
    "push_dataset_folder",
    "run_build",
]
