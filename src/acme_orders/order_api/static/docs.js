// Swagger UI over this API's own schema. A file of its own, not an inline script, so that the
// page's Content-Security-Policy can forbid inline scripts. Loaded after swagger-ui-bundle.js
// (both deferred, so in order, once the page is parsed).
"use strict";

window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  // FastAPI's own settings for its /docs, so the page looks as it always did.
  layout: "BaseLayout",
  deepLinking: true,
  showExtensions: true,
  showCommonExtensions: true,
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
  // No badge fetched from validator.swagger.io: the page talks to this API only.
  validatorUrl: null,
});
