"""Possible-breach incidents and their Notifiable Data Breaches assessment (Privacy Act Part IIIC).

`model` holds the frozen incident and its parts, `assessment` the state machine, `register`
the breach register, `statement` the draft s 26WK statement. All pure.
"""
