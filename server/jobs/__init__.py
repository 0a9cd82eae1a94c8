"""Video jobs (`/v1/jobs`): a job as data, the manager that runs them in this process, and the
runner that sends them to a Ray cluster instead."""
