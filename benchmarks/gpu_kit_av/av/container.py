from av import StandIn


class InputContainer(StandIn):
    pass
