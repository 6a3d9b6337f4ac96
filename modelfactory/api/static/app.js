// modelfactory dashboard: plain ES modules, no framework, no build step. It talks only to the REST API under
// /api/v1; this entry module maps each #/ route to its page and starts the router.
import { pageDatasets } from "./datasets.js";
import { pageJobs } from "./jobs.js";
import { pageModel, pageModels } from "./models.js";
import { pageOrder, pageOrders } from "./orders.js";
import { pageOverview } from "./overview.js";
import { pageUsage } from "./usage.js";
import { route, setRoutes } from "./session.js";

setRoutes([
  [/^#?\/?$/, pageOverview],
  [/^#\/orders\/?$/, pageOrders],
  [/^#\/orders\/(\d+)$/, pageOrder],
  [/^#\/models\/?$/, pageModels],
  [/^#\/models\/(.+)$/, pageModel],
  [/^#\/jobs\/?$/, pageJobs],
  [/^#\/usage\/?$/, pageUsage],
  [/^#\/datasets\/?$/, pageDatasets],
]);

window.addEventListener("hashchange", route);
window.addEventListener("DOMContentLoaded", route);
