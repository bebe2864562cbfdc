"""The ops dashboard: one page with the running experiment, its report, the drift verdicts and the logs for triage.

`data` gathers what the page shows from the files alone (home folder, event log, configs), each query bounded;
`plots` draws the charts server-side as inline PNGs; `routes` is the FastAPI router that the Serve app's ingress and
the standalone `mailroute dashboard` server both include; `cli` is that command. The page has no JavaScript and
fetches nothing: every chart is inline, and every text that came from an email is escaped by the template.
"""
