"""The build logic: plan, release, run, fence and publish. It never knows which backend it got."""
