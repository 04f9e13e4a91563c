# SPDX-License-Identifier: GPL-2.0
"""gnuplot for the PNG charts of make bench and make overcommit."""
import shutil
import subprocess


def gnuplot(script, log=print):
    """Run a gnuplot script (installing gnuplot-nox from Debian's archive
    when missing); False if there is no gnuplot."""
    if not shutil.which("gnuplot"):
        subprocess.run(["apt-get", "install", "-y", "-q", "gnuplot-nox"],
                       stdout=subprocess.DEVNULL, check=False)
    if not shutil.which("gnuplot"):
        log("no gnuplot: chart skipped")
        return False
    subprocess.run(["gnuplot"], input=script, text=True, check=True)
    return True
