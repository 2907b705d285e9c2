"""``python -m dl_inference`` is the ``dl-inference`` command."""

from dl_inference.cli import main

raise SystemExit(main())
