"""Read a JUnit XML file as a CI test reporter does (junitparser), and print its counts and
failures: `python read_junit.py reports/check.xml`."""

import sys

from junitparser import JUnitXml

xml = JUnitXml.fromfile(sys.argv[1])
print(f"{xml.tests} tests, {xml.failures} failure(s), {xml.errors} error(s)")
for suite in xml:
    for case in suite:
        for result in case.result:
            print(f"FAILED {suite.name} :: {case.name}: {result.message}")
