from django.urls import path

from . import views

urlpatterns = [
    path("", views.index),
    path("sized", views.sized),
    path("healthz", views.healthz),
    path("delay/<int:ms>", views.delay),
    path("cpu/<int:ms>", views.cpu),
    path("pid", views.pid),
    path("big/<int:n>", views.big),
    path("forwarded", views.forwarded),
    path("events/<int:n>", views.events),
]
