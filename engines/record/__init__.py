"""What a session keeps: the session folder (snapshot, journal, lock) and the record inside each PNG.
"""
