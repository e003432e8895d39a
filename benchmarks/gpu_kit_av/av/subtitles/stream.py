from av import StandIn


class SubtitleStream(StandIn):
    pass
