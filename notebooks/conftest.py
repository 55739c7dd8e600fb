"""`pytest --nbval notebooks/` (also without make): the kernels run headless, so no progress bar reaches an output
that nbval compares with the stored one (see course_utils.env.headless)."""

import os

os.environ.setdefault("WORKBOOK_HEADLESS", "1")
