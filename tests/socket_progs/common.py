"""Helpers of the socket test programs: report lines to the output file and
wait for the test's signal (a file appearing) across the checkpoint."""
import os, sys, time

OUT = sys.argv[1]


def say(*words):
    with open(OUT, "a") as f:
        f.write(" ".join(str(w) for w in words) + "\n")


def wait_for(name):
    path = OUT + "." + name
    while not os.path.exists(path):
        time.sleep(0.02)


def blob(tag, n):
    return (tag * (n // len(tag) + 1))[:n]
