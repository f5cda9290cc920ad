"""The cv report: report.json and its files (``writer``), the HTML page (``html``, ``reading``), plots and the
embedding map, and the text the commands print (``text``)."""
