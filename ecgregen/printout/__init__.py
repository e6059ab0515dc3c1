"""The printed ECG (issue 28): the standard 12-lead page a clinician reads at a glance and a hospital files, with
the service's measurements, report and diagnoses in its header and the top-3 neighbours on evidence pages.

One job per module, in the order a page is made:

* :mod:`~ecgregen.printout.paper` - the scale, the paper sizes and where everything sits, in mm (no drawing);
* :mod:`~ecgregen.printout.sources` - the ECG to print from each way one arrives (WFDB, hospital file, request
  samples, stream window) with its units and derived or absent leads, and the neighbours' signals;
* :mod:`~ecgregen.printout.content` - what the pages say, from a report result (identifiers only on request);
* :mod:`~ecgregen.printout.render` - drawing the pages as PDF, PNG or SVG bytes (matplotlib, and why);
* :mod:`~ecgregen.printout.served` - the page the server returns for ``GenerateReportRequest.print_format``;
* :mod:`~ecgregen.printout.document` - the types these share.

``client report FILE --print out.pdf`` prints on the client (:mod:`ecgregen.cli.report_print`); ``ecgregen bench``
times it (:mod:`ecgregen.bench.printout`).
"""
