from twisted.application.service import ServiceMaker

idgateway = ServiceMaker(
    "idgateway", "idgateway.tap", "Identity gateway: OpenID Connect reverse proxy", "idgateway"
)
